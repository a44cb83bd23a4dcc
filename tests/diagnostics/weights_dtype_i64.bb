# bbc-test: model=net
# bbc-test: checkpoint-from=net
# bbc-test: checkpoint-edit=dtype:bn.running_var:I64
bb 0.1;
# A checkpoint whose BatchNorm statistics were stored as integers by a buggy exporter.
model net() {
    input x: f32[1, 3, 8, 8];
    conv = conv2d(x, out=8, k=3, pad=1, bias=false);
    bn = batch_norm2d(conv);
    output y = relu(bn);
}
