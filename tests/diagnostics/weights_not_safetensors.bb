# bbc-test: model=net
# bbc-test: checkpoint-from=net
# bbc-test: checkpoint-edit=prefix:8031924123371070792
bb 0.1;
# A pickle (`torch.save`) file given where safetensors is expected: the first 8 bytes are not a
# sane header length.
model net() {
    input x: f32[1, 3, 8, 8];
    stem = conv2d(x, out=8, k=3, pad=1);
    output y = stem;
}
