bb 0.1;
# `H` and `W` have no defaults and no `--dim` sets them.
model net() {
    input x: f32[B=1, 3, H, W];
    output y = conv2d(x, out=8, k=3, pad=1);
}
