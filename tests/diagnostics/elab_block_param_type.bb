bb 0.1;
# A width passed where the block expects a bool flag.
block unit(x: tensor[B, C, H, W], residual: bool) -> tensor {
    conv = conv2d(x, out=C, k=3, pad=1);
    y = if residual { x + conv } else { conv };
    return y;
}

model net() {
    input x: f32[1, 8, 8, 8];
    u = unit(x, 8);
    output y = u;
}
