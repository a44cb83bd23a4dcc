# bbc-test: arg=width=8.0
bb 0.1;
# `--arg width=8.0` for an int parameter: the message names the command-line argument, since
# the location it points at is only the model the argument was given to.
model net(width: int = 8) {
    input x: f32[1, 3, 16, 16];
    output y = conv2d(x, out=width, k=3, pad=1);
}
