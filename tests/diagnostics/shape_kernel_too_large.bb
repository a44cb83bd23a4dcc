bb 0.1;
# A 7x7 unpadded conv on a 4x4 feature map.
model net() {
    input x: f32[1, 3, 4, 4];
    conv = conv2d(x, out=8, k=7);
    output y = conv;
}
