# bbc-test: model=renamed
# bbc-test: checkpoint-from=original
bb 0.1;
# The spec renamed a layer (`conv_1` -> `conv1`), so the checkpoint's keys no longer match.
model original() {
    input x: f32[1, 3, 8, 8];
    conv_1 = conv2d(x, out=8, k=3, pad=1);
    output y = conv_1;
}

model renamed() {
    input x: f32[1, 3, 8, 8];
    conv1 = conv2d(x, out=8, k=3, pad=1);
    output y = conv1;
}
