bb 0.1;
# Python allows `0 < k < 8`; `.bb` comparisons do not chain.
model net(k: int = 3) {
    assert 0 < k < 8, "kernel size out of range";
    input x: f32[1, 3, 8, 8];
    output y = conv2d(x, out=8, k=k, pad=k // 2);
}
