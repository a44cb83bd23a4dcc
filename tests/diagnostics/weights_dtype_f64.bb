# bbc-test: model=net
# bbc-test: checkpoint-from=net
# bbc-test: checkpoint-edit=dtype:fc.weight:F64
bb 0.1;
# A checkpoint saved from a float64 (`model.double()`) model.
model net() {
    input x: f32[1, 16];
    fc = linear(x, out=4);
    output y = fc;
}
