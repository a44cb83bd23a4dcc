bb 0.1;
# A block whose body never returns its result.
block unit(x: tensor[B, C, H, W]) -> tensor {
    conv = conv2d(x, out=C, k=3, pad=1);
    act = relu(conv);
}

model net() {
    input x: f32[1, 8, 16, 16];
    u = unit(x);
    output y = u;
}
