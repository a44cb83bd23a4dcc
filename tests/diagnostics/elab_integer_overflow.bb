bb 0.1;
# A width rule that doubles per stage, validated up front, overflows 64-bit integers.
fn width(i: int) -> int = 8 * 2 ** i;

model net(stages: int = 64) {
    assert width(stages) <= 4096, "the last stage is too wide";
    input x: f32[1, 3, 8, 8];
    output y = conv2d(x, out=width(0), k=1);
}
