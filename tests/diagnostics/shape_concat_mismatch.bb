bb 0.1;
# Concatenating along channels two maps of different spatial size (the skip was not upsampled).
model net() {
    input x: f32[1, 8, 16, 16];
    down = conv2d(x, out=16, k=3, s=2, pad=1);
    cat = concat([x, down], axis=1);
    output y = cat;
}
