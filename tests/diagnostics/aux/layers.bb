bb 0.1;
# Helper for the diagnostics suite (imported by cases, not a case itself).
block conv_bn_act(x: tensor[B, C, H, W], out: int) -> tensor {
    conv = conv2d(x, out=out, k=3, pad=1, bias=false);
    bn = batch_norm2d(conv);
    return relu(bn);
}
