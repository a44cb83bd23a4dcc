bb 0.1;
# A loop bound off by many orders of magnitude must hit a limit, not hang.
model net() {
    input x: f32[1, 8, 8, 8];
    h = x;
    for i in 0..100000000 {
        h = relu(h);
    }
    output y = h;
}
