bb 0.1;
# `stem` was renamed to `steam` in one place only.
model net() {
    input x: f32[1, 3, 8, 8];
    steam = conv2d(x, out=8, k=3, pad=1);
    output y = relu(stem);
}
