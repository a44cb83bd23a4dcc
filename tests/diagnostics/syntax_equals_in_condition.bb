bb 0.1;
# `=` where `==` was meant.
model net(pool: str = "avg") {
    input x: f32[1, 3, 8, 8];
    if pool = "avg" {
        h = avg_pool2d(x, k=2);
    } else {
        h = max_pool2d(x, k=2);
    }
    output y = h;
}
