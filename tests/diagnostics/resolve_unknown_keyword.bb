bb 0.1;
# PyTorch's `kernel_size` habit: conv2d's keyword is `k`.
model net() {
    input x: f32[1, 3, 8, 8];
    stem = conv2d(x, out=8, kernel=3, pad=1);
    output y = relu(stem);
}
