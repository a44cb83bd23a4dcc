bb 0.1;
# `conv2` is a typo for `conv2d`.
model net() {
    input x: f32[1, 3, 8, 8];
    stem = conv2(x, out=8, k=3, pad=1);
    output y = relu(stem);
}
