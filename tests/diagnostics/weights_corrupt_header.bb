# bbc-test: model=net
# bbc-test: checkpoint-from=net
# bbc-test: checkpoint-edit=header:{"stem.weight": {"dtype": "F32", "shape": [8, 3, 3, 3]
bb 0.1;
# A checkpoint whose JSON header is cut off.
model net() {
    input x: f32[1, 3, 8, 8];
    stem = conv2d(x, out=8, k=3, pad=1);
    output y = stem;
}
