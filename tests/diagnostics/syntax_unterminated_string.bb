bb 0.1;
# A path template whose closing quote was forgotten.
model net() {
    input x: f32[1, 3, 8, 8];
    h = x;
    for i in 0..2 as "stages.{i} {
        h = conv2d(h, out=8, k=3, pad=1);
    }
    output y = h;
}
