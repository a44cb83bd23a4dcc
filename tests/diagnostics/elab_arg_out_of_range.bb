# bbc-test: arg=width=99999999999999999999
# bbc-test: unlocated=E0313
bb 0.1;
# `--arg width=99999999999999999999`: an integer beyond 64 bits (a command-line value, so no
# source location), reported as out of range rather than as an unreadable literal.
model net(width: int = 8) {
    input x: f32[1, 3, 16, 16];
    output y = conv2d(x, out=width, k=3, pad=1);
}
