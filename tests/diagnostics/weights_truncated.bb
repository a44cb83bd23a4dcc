# bbc-test: model=net
# bbc-test: checkpoint-from=net
# bbc-test: checkpoint-edit=truncate:100
bb 0.1;
# An interrupted download: the file is 100 bytes short.
model net() {
    input x: f32[1, 3, 8, 8];
    stem = conv2d(x, out=8, k=3, pad=1);
    output y = stem;
}
