bb 0.1;
# Doubling the width per stage for far too many stages: a 131072 x 65536 weight.
fn width(i: int) -> int = 8 * 2 ** i;

model net(stages: int = 64) {
    input x: f32[1, 3, 8, 8];
    h = x;
    for i in 0..stages as "stages.{i}" {
        h = conv2d(h, out=width(i), k=1) @_;
    }
    output y = h;
}
