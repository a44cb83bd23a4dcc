bb 0.1;
# `out` is given positionally and again by keyword.
model net() {
    input x: f32[1, 3, 8, 8];
    stem = conv2d(x, 8, k=3, out=16);
    output y = relu(stem);
}
