bb 0.1;
# `output` is a model statement; a block must `return`.
block unit(x: tensor[B, C, H, W]) -> tensor {
    conv = conv2d(x, out=C, k=3, pad=1);
    output y = relu(conv);
}

model net() {
    input x: f32[1, 3, 8, 8];
    u = unit(x);
    output y = u;
}
