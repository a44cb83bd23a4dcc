# bbc-test: dim=H=-32
# bbc-test: unlocated=E0313
bb 0.1;
# `--dim H=-32`: a negative image height (a command-line value, so no source location).
model net() {
    input x: f32[B=1, 3, H=32, W=32];
    output y = conv2d(x, out=8, k=3, pad=1);
}
