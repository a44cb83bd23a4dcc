bb 0.1;
# A head count of zero makes the per-head width a division by zero.
model net(dim: int = 64, heads: int = 0) {
    let head_dim = dim // heads;
    input x: f32[1, 16, dim];
    q = linear(x, out=head_dim);
    output y = q;
}
