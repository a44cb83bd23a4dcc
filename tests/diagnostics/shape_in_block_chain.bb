bb 0.1;
# A shape error inside a block instantiated in a loop: the note chain must show where from.
block down(x: tensor[B, C, H, W], out: int) -> tensor {
    conv = conv2d(x, out=out, k=3, s=2);
    return relu(conv);
}

model net() {
    input x: f32[1, 3, 16, 16];
    h = x;
    for i in 0..4 as "stages.{i}" {
        h = down(h, 8 * (i + 1)) @_;
    }
    output y = h;
}
