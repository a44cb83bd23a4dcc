bb 0.1;
# The result of a call is not bound to anything.
model net() {
    input x: f32[1, 3, 8, 8];
    stem = conv2d(x, out=8, k=3, pad=1);
    relu(stem);
    output y = stem;
}
