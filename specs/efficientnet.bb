bb 0.1;
# EfficientNet — Tan, Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
# Networks", ICML 2019, arXiv 1905.11946.
#
# Key-compatible with timm's `EfficientNet` as built by `_gen_efficientnet`
# (timm/models/efficientnet.py, _efficientnet_builder.py, _efficientnet_blocks.py):
# checkpoints of efficientnet_b0 .. efficientnet_b7 (the non-`tf_` ports: symmetric padding,
# BatchNorm eps 1e-5) load strictly. efficientnet_b0: 311 keys (timm's 360 less the 49
# `num_batches_tracked`, which bbc's loader skips), 5,288,548 parameters.

# The B0 baseline (paper Table 1), one row per stage: (block type, repeats, kernel, stride of
# the first block, expansion ratio, output channels, SE ratio). timm spells the same rows as
# block strings, e.g. `ir_r2_k3_s2_e6_c24_se0.25`; "ds" is MBConv1 (timm DepthwiseSeparableConv),
# "ir" is MBConv6 (timm InvertedResidual).
let EFFICIENTNET_B0 = [
    ("ds", 1, 3, 1, 1, 16,  0.25),
    ("ir", 2, 3, 2, 6, 24,  0.25),
    ("ir", 2, 5, 2, 6, 40,  0.25),
    ("ir", 3, 3, 2, 6, 80,  0.25),
    ("ir", 3, 5, 1, 6, 112, 0.25),
    ("ir", 4, 5, 2, 6, 192, 0.25),
    ("ir", 1, 3, 1, 6, 320, 0.25),
];

# Tiny test configuration (research note A7b): stem 8, MBConv1 k3 s1 -> 8 (with residual),
# MBConv2 k3 s2 -> 16, MBConv2 k5 s2 -> 24, head 32. timm builds the same network with
# EfficientNet(block_args=decode_arch_def([['ds_r1_k3_s1_e1_c8_se0.25'],
# ['ir_r1_k3_s2_e2_c16_se0.25'], ['ir_r1_k5_s2_e2_c24_se0.25']]), stem_size=8,
# num_features=32, num_classes=10, act_layer=SiLU): 4,858 parameters, 64 keys.
let EFFICIENTNET_TEST = [
    ("ds", 1, 3, 1, 1, 8,  0.25),
    ("ir", 1, 3, 2, 2, 16, 0.25),
    ("ir", 1, 5, 2, 2, 24, 0.25),
];

# timm's scaling rules: channels `round_channels` = make_divisible(c * multiplier, 8) (stem and
# head included), repeats `_scale_stage_depth` with depth_trunc "ceil" (one row per stage).
fn round_channels(c: int, width: float) -> int = make_divisible(c * width, 8);
fn round_repeats(r: int, depth: float) -> int = ceil(r * depth);
# timm's symmetric padding for `padding=''`: ((stride - 1) + (k - 1)) // 2.
fn pad_for(k: int, s: int) -> int = ((s - 1) + (k - 1)) // 2;

# timm SqueezeExcite: global average -> 1x1 conv (rd, bias) -> SiLU -> 1x1 conv -> sigmoid gate.
block squeeze_excite(x: tensor[B, C, H, W], rd: int) -> tensor[B, C, H, W] {
    conv_reduce = conv2d(mean(x, axes=[2, 3], keepdim=true), out=rd, k=1);
    conv_expand = conv2d(silu(conv_reduce), out=C, k=1);
    return x * sigmoid(conv_expand);
}

# MBConv1 (timm DepthwiseSeparableConv): depthwise kxk -> BN+SiLU -> SE -> 1x1 -> BN.
# timm computes the SE width from the block input: round(C * se_ratio).
block ds_block(x: tensor[B, C, H, W], out: int, k: int, s: int, se_ratio: float) -> tensor {
    conv_dw = conv2d(x, out=C, k=k, s=s, pad=pad_for(k, s), groups=C, bias=false);
    bn1 = batch_norm2d(conv_dw);
    se = squeeze_excite(silu(bn1), rd=round(C * se_ratio));
    conv_pw = conv2d(se, out=out, k=1, bias=false);
    bn2 = batch_norm2d(conv_pw);
    return if s == 1 && C == out { x + drop_path(bn2) } else { bn2 };
}

# MBConv-e (timm InvertedResidual): 1x1 expand -> BN+SiLU -> depthwise kxk -> BN+SiLU -> SE ->
# 1x1 project -> BN. SE width from the block input, as timm computes it: the ratio is divided
# by the expansion (se_from_exp=False) and applied to the expanded width.
block ir_block(x: tensor[B, C, H, W], out: int, k: int, s: int, e: int, se_ratio: float) -> tensor {
    let mid = make_divisible(C * e, 8);
    conv_pw = conv2d(x, out=mid, k=1, bias=false);
    bn1 = batch_norm2d(conv_pw);
    conv_dw = conv2d(silu(bn1), out=mid, k=k, s=s, pad=pad_for(k, s), groups=mid, bias=false);
    bn2 = batch_norm2d(conv_dw);
    se = squeeze_excite(silu(bn2), rd=round(mid * (se_ratio / e)));
    conv_pwl = conv2d(se, out=out, k=1, bias=false);
    bn3 = batch_norm2d(conv_pwl);
    return if s == 1 && C == out { x + drop_path(bn3) } else { bn3 };
}

# The family: `width` and `depth` scale the table, `res` is the default input side.
model efficientnet(width: float = 1.0, depth: float = 1.0, res: int = 224, drop_rate: float = 0.2,
                   stages: [(str, int, int, int, int, int, float)] = EFFICIENTNET_B0,
                   stem: int = 32, head: int = 1280, num_classes: int = 1000) {
    input x: f32[B=1, 3, H=res, W=H];
    conv_stem = conv2d(x, out=round_channels(stem, width), k=3, s=2, pad=1, bias=false);
    bn1 = batch_norm2d(conv_stem);
    h = silu(bn1);
    for (i, (kind, repeats, k, s, e, c, se)) in enumerate(stages) {
        for j in 0..round_repeats(repeats, depth) as "blocks.{i}.{j}" {
            let stride = if j == 0 { s } else { 1 };
            if kind == "ds" {
                h = ds_block(h, round_channels(c, width), k, stride, se) @_;
            } else {
                h = ir_block(h, round_channels(c, width), k, stride, e, se) @_;
            }
        }
    }
    conv_head = conv2d(h, out=round_channels(head, width), k=1, bias=false);
    bn2 = batch_norm2d(conv_head);
    pooled = mean(silu(bn2), axes=[2, 3]);
    classifier = linear(dropout(pooled, p=drop_rate), out=num_classes);
    output logits = classifier;
}

# Tiny configuration for tests (see EFFICIENTNET_TEST).
model efficientnet_test = efficientnet(stages=EFFICIENTNET_TEST, stem=8, head=32, res=32, num_classes=10);

# The published family: timm `_gen_efficientnet` docstring / tensorflow/tpu efficientnet_builder
# (width, depth, resolution, dropout). These are a hand-rounded table, not alpha^phi exactly.
# (timm's own pretrained_cfg trains b2/b3/b4 at 256/288/320 instead of 260/300/380.)
model efficientnet_b0 = efficientnet(width=1.0, depth=1.0, res=224, drop_rate=0.2);
model efficientnet_b1 = efficientnet(width=1.0, depth=1.1, res=240, drop_rate=0.2);
model efficientnet_b2 = efficientnet(width=1.1, depth=1.2, res=260, drop_rate=0.3);
model efficientnet_b3 = efficientnet(width=1.2, depth=1.4, res=300, drop_rate=0.3);
model efficientnet_b4 = efficientnet(width=1.4, depth=1.8, res=380, drop_rate=0.4);
model efficientnet_b5 = efficientnet(width=1.6, depth=2.2, res=456, drop_rate=0.4);
model efficientnet_b6 = efficientnet(width=1.8, depth=2.6, res=528, drop_rate=0.5);
model efficientnet_b7 = efficientnet(width=2.0, depth=3.1, res=600, drop_rate=0.5);

# The pure compound-scaling rule (paper section 3.3): depth alpha^phi, width beta^phi,
# resolution gamma^phi with alpha = 1.2, beta = 1.1, gamma = 1.15 (alpha * beta^2 * gamma^2 ~ 2),
# resolution rounded to a multiple of 8. For NEW, untrained members only: it does NOT
# reproduce the published B1..B7 (phi = 1 gives B2's widths and depths at 256 px; phi = 2 has
# a 1552-wide head where B3 has 1536). phi = 0 is B0. `--arg phi=N` picks a member.
model efficientnet_phi(phi: int = 1) = efficientnet(width=1.1 ** phi, depth=1.2 ** phi,
                                                   res=round(224 * 1.15 ** phi / 8) * 8);
