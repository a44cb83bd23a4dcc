bb 0.1;
# A block called with one positional argument more than it declares.
block unit(x: tensor[B, C, H, W], width: int) -> tensor {
    conv = conv2d(x, out=width, k=3, pad=1);
    return relu(conv);
}

model net() {
    input x: f32[1, 3, 8, 8];
    u = unit(x, 8, 3);
    output y = u;
}
