bb 0.1;
# Four stages, but the widths table has only three entries.
model net(dims: [int] = [8, 16, 32]) {
    input x: f32[1, 3, 16, 16];
    h = x;
    for i in 0..4 as "stages.{i}" {
        h = conv2d(h, out=dims[i], k=3, pad=1) @_;
    }
    output y = h;
}
