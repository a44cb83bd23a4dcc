bb 0.1;
# One closing parenthesis too many.
model net() {
    input x: f32[1, 3, 8, 8];
    stem = conv2d(x, out=8, k=3, pad=1));
    output y = stem;
}
