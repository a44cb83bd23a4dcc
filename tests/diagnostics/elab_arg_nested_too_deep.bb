# bbc-test: arg=sizes=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
# bbc-test: unlocated=E0313
bb 0.1;
# `--arg sizes=[[[...]]]` nested 101 levels: refused at the elaborator's limit on values, as
# the same list written in the spec would be, and read without recursing past it.
model net(sizes: [int] = [8]) {
    input x: f32[1, 3, 16, 16];
    output y = conv2d(x, out=sizes[0], k=3, pad=1);
}
