bb 0.1;
# FFF — multi-level feature fusion.
#
# "FFF (multi-level feature fusion)" is this project's own name, not a published
# architecture: it stands for FPN-style top-down fusion of a backbone's feature levels,
# with an optional BiFPN "fast normalised" weighting of each fusion node. It is NOT the
# Fast Feedforward Network (Belcak & Wattenhofer 2023, arXiv 2308.14711), a conditional-
# computation MLP that happens to share the acronym.
#
#   FPN:   Lin, Dollar, Girshick, He, Hariharan, Belongie, "Feature Pyramid Networks for
#          Object Detection", CVPR 2017, arXiv 1612.03144.
#   BiFPN: Tan, Pang, Le, "EfficientDet: Scalable and Efficient Object Detection",
#          CVPR 2020, arXiv 1911.09070 (fast normalised fusion, section 3.3).
#
# For levels C_0 (finest) .. C_{n-1} (coarsest), all with lateral width d:
#   L_i = conv1x1(C_i)                                       lateral, with bias
#   M_{n-1} = L_{n-1}
#   M_i = fuse(L_i, nearest_resize(M_{i+1}, size of L_i))   top-down
#   P_i = conv3x3(M_i)                                       output, with bias, no activation
# fuse is a plain sum (FPN), or with `bifpn=true` BiFPN's fast normalised fusion
#   w = ReLU(raw),  fuse(I_0, I_1) = sum_i w_i * I_i / (eps + sum_j w_j),  eps = 1e-4
# with one learned `raw` vector (2 scalars) per fusion node, inputs ordered
# [lateral, top-down]. Only the weighting is taken from BiFPN: the node keeps FPN's plain
# 3x3 output conv (no SiLU / separable conv / BN, no bottom-up path).
#
# Key-compatible with torchvision's `torchvision.ops.FeaturePyramidNetwork` (checked
# against torchvision 0.29, no extra block): `inner_blocks.{i}.0.{weight,bias}` (1x1
# laterals) and `layer_blocks.{i}.0.{weight,bias}` (3x3 outputs); the `.0` is the conv
# inside torchvision's `Conv2dNormActivation` built without norm and activation. The
# nearest resize to the lateral's exact size is torchvision's `F.interpolate(size=...)`,
# so odd sizes (15 -> 8 -> 4) work. The BiFPN weights are `fusions.{i}.edge_weights`
# (the attribute name of effdet's `FpnCombine`); torchvision has no counterpart.
#
# Parameters: in [8, 16, 32] -> 8: 2,224 (torchvision); ResNet-50 C2..C5 -> 256: 3,344,384.

# Fast normalised fusion (EfficientDet eq. 3): weights kept non-negative by ReLU, and
# normalised by their sum plus eps instead of a softmax (cheaper, nearly as accurate).
# Written term by term as effdet's FpnCombine does: x_i * w_i / (sum w + eps), summed.
block fast_normalized_fusion(xs: [tensor], eps: float = 1e-4) -> tensor {
    let n = len(xs);
    param edge_weights: f32[n] = ones();
    w = relu(edge_weights);
    denom = sum(w, axes=[0]) + eps;
    acc = none;
    for (i, x) in enumerate(xs) {
        term = x * slice(w, axis=0, start=i, end=i + 1) / denom;
        acc = if i == 0 { term } else { acc + term };
    }
    return acc;
}

# The FPN neck over a list of levels (finest first); returns the fused levels, finest
# first, like torchvision's result dict in order.
block fpn(feats: [tensor], out: int, bifpn: bool = false, eps: float = 1e-4) -> [tensor] {
    let n = len(feats);
    assert n >= 2, "fpn needs at least two levels, got {n}";
    laterals = [conv2d(f, out=out, k=1) @"inner_blocks.{i}.0" for (i, f) in enumerate(feats)];
    last = laterals[n - 1];
    results = [conv2d(last, out=out, k=3, pad=1) @"layer_blocks.{n - 1}.0"];
    # Coarse to fine. The top-down map is resized to the lateral's exact size (not a fixed
    # 2x), so levels whose sizes are not exact halves (odd inputs) still line up.
    for i in reversed(0..n - 1) {
        let size = shape(laterals[i]);
        top_down = upsample(last, size=(size[2], size[3]), mode="nearest");
        if bifpn {
            last = fast_normalized_fusion([laterals[i], top_down], eps=eps) @"fusions.{i}";
        } else {
            last = laterals[i] + top_down;
        }
        results = [conv2d(last, out=out, k=3, pad=1) @"layer_blocks.{i}.0"] ++ results;
    }
    return results;
}

# The toy backbone that feeds the neck: one stride-2 conv-BN-ReLU and one stride-1
# conv-BN-ReLU per level, so level i has stride 2^(i+1) (2, 4, 8 for three levels).
block down_block(x: tensor[B, C, H, W], out: int) -> tensor {
    conv1 = conv2d(x, out=out, k=3, s=2, pad=1, bias=false);
    bn1 = batch_norm2d(conv1);
    conv2 = conv2d(relu(bn1), out=out, k=3, pad=1, bias=false);
    bn2 = batch_norm2d(conv2);
    return relu(bn2);
}

# Backbone + neck, named like torchvision's `BackboneWithFPN` (`body`, `fpn`), so the
# neck's keys are torchvision's FPN keys under `fpn.`. Outputs: `features.{i}` = P_i.
model fff(widths: [int] = [8, 16, 32], out: int = 8, bifpn: bool = false) {
    input x: f32[B=1, 3, H=32, W=32];
    h = x;
    feats = [];
    scope "body" {
        for (i, w) in enumerate(widths) as "stages.{i}" {
            h = down_block(h, w) @_;
            feats = feats ++ [h];
        }
    }
    fused = fpn(feats, out, bifpn=bifpn) @"fpn";
    output features = fused;
}

# The neck alone over four given levels (C2..C5 of a ResNet), keys exactly torchvision's
# `FeaturePyramidNetwork(channels, out)`. Each level halves the previous one's size,
# rounding up as a stride-2 conv with padding does.
model fpn_neck(channels: [int] = [256, 512, 1024, 2048], out: int = 256, bifpn: bool = false) {
    assert len(channels) == 4, "fpn_neck takes four levels (C2..C5)";
    input c2: f32[B=1, channels[0], H=56, W=H];
    input c3: f32[B, channels[1], H3=(H + 1) // 2, W3=(W + 1) // 2];
    input c4: f32[B, channels[2], H4=(H3 + 1) // 2, W4=(W3 + 1) // 2];
    input c5: f32[B, channels[3], H5=(H4 + 1) // 2, W5=(W4 + 1) // 2];
    fused = fpn([c2, c3, c4, c5], out, bifpn=bifpn) @_;
    output features = fused;
}

# Tiny configurations for tests (the research note's FPN test config: levels 8/16/32 at
# 16x16, 8x8, 4x4 -> 8 channels; its neck has 2,224 parameters).
model fpn_test = fff(widths=[8, 16, 32], out=8);
model fff_bifpn_test = fff(widths=[8, 16, 32], out=8, bifpn=true);
model fpn_neck_test = fpn_neck(channels=[8, 16, 32, 64], out=8);

# Canonical: the FPN neck of Faster R-CNN / RetinaNet-style detectors on ResNet-50
# C2..C5 (256, 512, 1024, 2048 channels at 224x224 input) -> 256: 3,344,384 parameters.
model fpn_resnet50_neck = fpn_neck(channels=[256, 512, 1024, 2048], out=256);
