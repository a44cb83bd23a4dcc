bb 0.1;
# A residual connection around a conv that changes the channel count.
model net() {
    input x: f32[1, 8, 8, 8];
    conv = conv2d(x, out=16, k=3, pad=1);
    output y = x + conv;
}
