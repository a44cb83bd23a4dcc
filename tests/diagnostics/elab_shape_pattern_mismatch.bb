bb 0.1;
# The stem block expects RGB input; it is given 8 channels.
block stem(x: tensor[B, 3, H, W]) -> tensor {
    conv = conv2d(x, out=16, k=3, pad=1);
    return relu(conv);
}

model net() {
    input x: f32[1, 8, 16, 16];
    s = stem(x);
    output y = s;
}
