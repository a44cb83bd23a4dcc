bb 0.1;
# An upsampling decoder on transposed convolutions for the ahead-of-time tests: a grouped
# one with output padding and a ReLU, a 4x4 stride-2 one with GELU, and a dilated one with
# a stride larger than its kernel, over a batch of two.

model decoder() {
    input z: f32[2, 8, 5, 6];
    up1 = conv_transpose2d(z, out=6, k=3, s=2, pad=1, output_padding=1, groups=2);
    up2 = conv_transpose2d(relu(up1), out=4, k=4, s=2, pad=1);
    output y = gelu(up2);
    side = conv_transpose2d(z, out=3, k=2, s=3, pad=1, dilation=2);
    output x = side;
}
