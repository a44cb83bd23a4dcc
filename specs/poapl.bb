bb 0.1;
# PoAPL — "Pooling and Attention-based Pyramid Learning". No paper of that name exists (see
# the research note, architectures.md §A9). This spec realises it as the two real designs the
# name points at, applied as a head on a backbone feature map:
#
#   1. the PSPNet pyramid pooling module — Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing
#      Network", CVPR 2017, arXiv 1612.01105 (as in the official hszhao/semseg code): for each
#      bin b in (1, 2, 3, 6), adaptive average pool to b x b -> 1x1 conv (C -> C/4, no bias) ->
#      BN -> ReLU -> bilinear upsample back to H x W with align_corners=True; the input and
#      the four branches are concatenated in that order (2C channels), then fused by a
#      3x3 conv (2C -> out, no bias) -> BN -> ReLU;
#   2. CBAM — Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
#      arXiv 1807.06521: channel attention sigmoid(MLP(avgpool) + MLP(maxpool)) with one
#      shared bias-free MLP C -> C/16 -> C, then spatial attention sigmoid(BN(conv7x7([mean_c,
#      max_c]))), both multiplied into the features. This is timm's `CbamModule`
#      (timm/layers/cbam.py), whose spatial conv is a ConvNormAct (conv + BN, no act) and
#      whose pooled-channel order is [mean, max] (the original repo uses [max, mean] and a
#      biased MLP).
#
# State-dict keys (the torch `PoAPL` module of tools/reference/cases/pyramid.py):
#   ppm.stages.{i}.conv.weight, ppm.stages.{i}.bn.*        one per bin
#   ppm.bottleneck.conv.weight, ppm.bottleneck.bn.*        the 3x3 fuse conv
#   cbam.channel.fc1.weight, cbam.channel.fc2.weight       timm CbamModule, loads as is
#   cbam.spatial.conv.conv.weight, cbam.spatial.conv.bn.*
# poapl_2048 (2048 -> 512, the PSPNet-on-ResNet-50 widths): 23,106,660 parameters (PPM branches
# alone 4,198,400); poapl_test (16 -> 16): 5,060 parameters, 32 keys.

# One pyramid level: pool to bins x bins, reduce, normalise, and resize back to H x W.
block ppm_stage(x: tensor[B, C, H, W], bins: int, out: int) -> tensor[B, out, H, W] {
    conv = conv2d(adaptive_avg_pool2d(x, size=bins), out=out, k=1, bias=false);
    bn = batch_norm2d(conv);
    return upsample(relu(bn), size=(H, W), mode="bilinear", align_corners=true);
}

# The pyramid pooling module with its fuse conv: concat([x, stage_1, ..., stage_n]) -> 3x3 conv.
block pyramid_pooling(x: tensor[B, C, H, W], out: int, bins: [int]) -> tensor[B, out, H, W] {
    assert C % len(bins) == 0, "{C} input channels do not split over {len(bins)} pyramid levels";
    feats = [x];
    for (i, b) in enumerate(bins) as "stages.{i}" {
        stage = ppm_stage(x, b, C // len(bins)) @_;
        feats = feats ++ [stage];
    }
    scope "bottleneck" {
        conv = conv2d(concat(feats, axis=1), out=out, k=3, pad=1, bias=false);
        bn = batch_norm2d(conv);
    }
    return relu(bn);
}

# CBAM channel attention: one MLP (two bias-free 1x1 convs), shared by the average- and
# max-pooled descriptors — applying the layer values `fc1`, `fc2` twice shares their weights.
block channel_attn(x: tensor[B, C, H, W], rd: int) -> tensor[B, C, H, W] {
    fc1 = conv2d(out=rd, k=1, bias=false);
    fc2 = conv2d(out=C, k=1, bias=false);
    from_avg = fc2(relu(fc1(mean(x, axes=[2, 3], keepdim=true))));
    from_max = fc2(relu(fc1(max(x, axes=[2, 3], keepdim=true))));
    return x * sigmoid(from_avg + from_max);
}

# CBAM spatial attention: [mean, max] over channels -> k x k conv (2 -> 1) + BN -> sigmoid.
block spatial_attn(x: tensor[B, C, H, W], k: int) -> tensor[B, C, H, W] {
    pooled = concat([mean(x, axes=[1], keepdim=true), max(x, axes=[1], keepdim=true)], axis=1);
    scope "conv" {
        conv = conv2d(pooled, out=1, k=k, pad=k // 2, bias=false);
        bn = batch_norm2d(conv);
    }
    return x * sigmoid(bn);
}

# timm CbamModule(channels, rd_ratio=1/16, rd_divisor=1, spatial_kernel_size=7):
# rd = make_divisible(C / 16, 1, round_limit=0), i.e. C / 16 rounded half up, at least 1.
block cbam_module(x: tensor[B, C, H, W], rd_ratio: float = 1.0 / 16, k: int = 7) -> tensor[B, C, H, W] {
    channel = channel_attn(x, make_divisible(C * rd_ratio, 1, round_limit=0.0));
    spatial = spatial_attn(channel, k);
    return spatial;
}

# The head: `x` is a backbone feature map (e.g. ResNet-50 C5 at output stride 8: 2048 x 60 x 60
# for a 473 x 473 crop); the output is the attended `out_chs`-channel map at the same size.
model poapl(in_chs: int = 2048, out_chs: int = 512, bins: [int] = [1, 2, 3, 6],
            rd_ratio: float = 1.0 / 16, spatial_kernel: int = 7, size: int = 60) {
    input x: f32[B=1, in_chs, H=size, W=H];
    ppm = pyramid_pooling(x, out_chs, bins);
    cbam = cbam_module(ppm, rd_ratio, spatial_kernel);
    output y = cbam;
}

# Tiny configuration for tests: C = 16 -> 16 on 12 x 12 (every bin divides 12; run it with
# --dim H=13 --dim W=10 for overlapping adaptive bins and non-integer upsampling ratios).
model poapl_test = poapl(in_chs=16, out_chs=16, size=12);

# Canonical: PSPNet widths on a ResNet-50 C5 feature map, 2048 -> 512.
model poapl_2048 = poapl(in_chs=2048, out_chs=512);
