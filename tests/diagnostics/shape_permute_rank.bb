bb 0.1;
# Turning an NCHW map into tokens with a 3-axis permutation of a 4-D tensor.
model net() {
    input x: f32[1, 8, 4, 4];
    tokens = permute(x, [0, 2, 1]);
    output y = tokens;
}
