# bbc-test: dim=HH=32
bb 0.1;
# `--dim HH=32` where the size parameter is `H`.
model net() {
    input x: f32[B=1, 3, H=8, W=8];
    output y = conv2d(x, out=8, k=3, pad=1);
}
