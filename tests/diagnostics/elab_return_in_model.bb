bb 0.1;
# A model declares outputs; `return` belongs in blocks.
model net() {
    input x: f32[1, 3, 8, 8];
    stem = conv2d(x, out=8, k=3, pad=1);
    return relu(stem);
}
