bb 0.1;
# A grouped conv whose groups do not divide the input channels.
model net() {
    input x: f32[1, 6, 8, 8];
    dw = conv2d(x, out=8, k=3, pad=1, groups=4);
    output y = dw;
}
