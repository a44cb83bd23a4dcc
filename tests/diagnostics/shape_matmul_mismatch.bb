bb 0.1;
# Attention scores with the key not transposed: [1, 4, 16] @ [1, 4, 16].
model net() {
    input q: f32[1, 4, 16];
    input k: f32[1, 4, 16];
    scores = matmul(q, k);
    output y = scores;
}
