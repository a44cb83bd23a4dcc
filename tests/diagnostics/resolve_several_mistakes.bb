bb 0.1;
# Three independent mistakes in one model must all be reported in one run.
model net() {
    input x: f32[1, 3, 8, 8];
    stem = conv2d(x, out=8, k=3, padding=1);
    act = rleu(stem);
    pool = avg_pool2d(act, k=2);
    output y = flaten(pool, start=1);
}
