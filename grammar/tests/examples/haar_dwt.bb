block haar_dwt(x: tensor[B, C, H, W]) -> tensor[B, 4 * C, H // 2, W // 2] {
    assert H % 2 == 0 && W % 2 == 0, "haar_dwt needs even spatial dims";
    const filt: f32[4 * C, 1, 2, 2] = repeat_const(haar2d_filters(), C);  # LL, LH, HL, HH per channel
    return conv2d_with(x, filt, s=2, groups=C);
}
