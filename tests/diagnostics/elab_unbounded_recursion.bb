bb 0.1;
# A recursive block whose stopping condition can never hold (depth grows instead of shrinking).
block tower(x: tensor[B, C, H, W], depth: int) -> tensor {
    if depth == 0 {
        return x;
    }
    conv = conv2d(x, out=C, k=3, pad=1);
    inner = tower(conv, depth + 1);
    return inner;
}

model net() {
    input x: f32[1, 3, 8, 8];
    output y = tower(x, 3);
}
