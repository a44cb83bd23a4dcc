bb 0.1;
# Split sizes may be zero (an empty part) but not negative.
model halves() {
    input x: f32[1, 4, 8, 8];
    (a, b) = split(x, [6, -2], axis=1);
    output y = a;
}
