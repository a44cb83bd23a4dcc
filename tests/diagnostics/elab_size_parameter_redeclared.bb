bb 0.1;
# `N` is bound to 4 by the first input and declared again with a default of 5 by the second:
# one name would mean two sizes (`a + b` then failed to broadcast for no visible reason).
model pair() {
    input a: f32[N=4];
    input b: f32[N=5];
    output y = a + b;
}
