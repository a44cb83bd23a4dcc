bb 0.1;
# Two convs tagged with the same path segment.
model net() {
    input x: f32[1, 3, 8, 8];
    a = conv2d(x, out=8, k=3, pad=1) @"stem";
    b = conv2d(a, out=8, k=3, pad=1) @"stem";
    output y = b;
}
