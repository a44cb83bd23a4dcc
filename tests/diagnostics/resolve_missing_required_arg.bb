bb 0.1;
# conv2d's `out` has no default.
model net() {
    input x: f32[1, 3, 8, 8];
    stem = conv2d(x, k=3, pad=1);
    output y = relu(stem);
}
