bb 0.1;
# A block pasted twice under the same name.
block unit(x: tensor[B, C, H, W]) -> tensor {
    conv = conv2d(x, out=C, k=3, pad=1);
    return relu(conv);
}

block unit(x: tensor[B, C, H, W]) -> tensor {
    conv = conv2d(x, out=C, k=1);
    return gelu(conv);
}

model net() {
    input x: f32[1, 3, 8, 8];
    output y = unit(x);
}
