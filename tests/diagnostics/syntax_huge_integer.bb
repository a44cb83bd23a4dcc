bb 0.1;
# An integer literal that does not fit in 64 bits.
model net(width: int = 99999999999999999999) {
    input x: f32[1, 3, 8, 8];
    stem = conv2d(x, out=width, k=3, pad=1);
    output y = stem;
}
