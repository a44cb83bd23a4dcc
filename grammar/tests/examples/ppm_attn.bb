block ppm_attn(x: tensor[B, C, H, W], bins: [int] = [1, 2, 3, 6]) -> tensor {
    outs = [x];
    for (i, b) in enumerate(bins) as "stages.{i}" {
        conv = conv2d(adaptive_avg_pool2d(x, b), out=C // len(bins), k=1, bias=false);
        bn = bn_act(conv);
        outs = outs ++ [upsample(bn, size=(H, W), mode="bilinear")];
    }
    return squeeze_excite(concat(outs, axis=1), rd=C // 8) @"attn";
}
