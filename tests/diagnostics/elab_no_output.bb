# bbc-test: unlocated=E0312
bb 0.1;
# The model computes its result but never declares it as an output.
# KNOWN GAP (reported): E0312 should point at the model header; `unlocated=E0312` until then.
model net() {
    input x: f32[1, 3, 8, 8];
    stem = conv2d(x, out=8, k=3, pad=1);
    y = relu(stem);
}
