bb 0.1;
# The block promises to keep the spatial size, but the stride-2 conv halves it.
block unit(x: tensor[B, C, H, W]) -> tensor[B, C, H, W] {
    conv = conv2d(x, out=C, k=3, s=2, pad=1);
    return relu(conv);
}

model net() {
    input x: f32[1, 8, 16, 16];
    u = unit(x);
    output y = u;
}
