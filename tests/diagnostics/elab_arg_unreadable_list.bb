# bbc-test: arg=sizes=[8 16]
# bbc-test: unlocated=E0313
bb 0.1;
# `--arg sizes=[8 16]`: a list missing its comma; the note says where reading stopped.
model net(sizes: [int] = [8]) {
    input x: f32[1, 3, 16, 16];
    output y = conv2d(x, out=sizes[0], k=3, pad=1);
}
