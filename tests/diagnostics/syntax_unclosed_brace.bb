bb 0.1;
# The block body is never closed; the parser reaches the end of the file.
block head(x: tensor[B, C, H, W]) -> tensor {
    fc = conv2d(x, out=C, k=1);
    return relu(fc);

model net() {
    input x: f32[1, 3, 8, 8];
    output y = head(x);
}
