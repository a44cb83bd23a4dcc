bb 0.1;
# Flattening by hand with the wrong feature count (8 * 4 * 4 = 128, not 256).
model net() {
    input x: f32[1, 8, 4, 4];
    flat = reshape(x, [1, 256]);
    output y = flat;
}
