bb 0.1;
# Baseline (B0) architecture as data: the same information timm encodes in block strings such as
# ir_r2_k3_s2_e6_c24_se0.25 — (type, repeats, kernel, stride, expansion, out channels, SE ratio).
let EFFNET_B0 = [
    ("ds", 1, 3, 1, 1, 16,  0.25),
    ("ir", 2, 3, 2, 6, 24,  0.25),
    ("ir", 2, 5, 2, 6, 40,  0.25),
    ("ir", 3, 3, 2, 6, 80,  0.25),
    ("ir", 3, 5, 1, 6, 112, 0.25),
    ("ir", 4, 5, 2, 6, 192, 0.25),
    ("ir", 1, 3, 1, 6, 320, 0.25),
];

fn round_ch(c: int, width: float) -> int = make_divisible(c * width, 8);   # timm round_channels
fn round_depth(r: int, depth: float) -> int = ceil(r * depth);            # timm depth_trunc "ceil"
fn sym_pad(k: int, s: int) -> int = ((s - 1) + (k - 1)) // 2;            # timm symmetric padding

block bn_act(x: tensor, act: bool = true) -> tensor {      # = timm BatchNormAct2d (params at top level)
    bn = batch_norm2d(x, eps=1e-5) @_;                     # weight, bias, running_mean, running_var
    return if act { silu(bn) } else { bn };
}

block squeeze_excite(x: tensor[B, C, H, W], rd: int) -> tensor[B, C, H, W] {
    conv_reduce = conv2d(mean(x, axes=[2, 3], keepdim=true), out=rd, k=1);
    conv_expand = conv2d(silu(conv_reduce), out=C, k=1);
    return x * sigmoid(conv_expand);
}

block ds_block(x: tensor[B, C, H, W], out: int, k: int, s: int, se_ratio: float) -> tensor {
    conv_dw = conv2d(x, out=C, k=k, s=s, pad=sym_pad(k, s), groups=C, bias=false);
    bn1 = bn_act(conv_dw);
    se = squeeze_excite(bn1, rd=round(C * se_ratio));
    conv_pw = conv2d(se, out=out, k=1, bias=false);
    bn2 = bn_act(conv_pw, act=false);
    return if s == 1 && C == out { x + bn2 } else { bn2 };
}

block ir_block(x: tensor[B, C, H, W], out: int, k: int, s: int, e: int, se_ratio: float) -> tensor {
    let mid = make_divisible(C * e, 8);
    conv_pw = conv2d(x, out=mid, k=1, bias=false);
    bn1 = bn_act(conv_pw);
    conv_dw = conv2d(bn1, out=mid, k=k, s=s, pad=sym_pad(k, s), groups=mid, bias=false);
    bn2 = bn_act(conv_dw);
    se = squeeze_excite(bn2, rd=round(mid * se_ratio / e));   # SE width from block input (timm)
    conv_pwl = conv2d(se, out=out, k=1, bias=false);
    bn3 = bn_act(conv_pwl, act=false);
    return if s == 1 && C == out { x + bn3 } else { bn3 };
}

model efficientnet(width: float = 1.0, depth: float = 1.0, res: int = 224,
                   arch: [(str, int, int, int, int, int, float)] = EFFNET_B0,
                   num_classes: int = 1000) {
    input x: f32[B, 3, res, res];
    conv_stem = conv2d(x, out=round_ch(32, width), k=3, s=2, pad=1, bias=false);
    bn1 = bn_act(conv_stem);
    h = bn1;
    feats = [];
    for (i, (t, r, k, s, e, c, se)) in enumerate(arch) as "blocks.{i}" {
        for j in 0..round_depth(r, depth) {
            let stride = if j == 0 { s } else { 1 };
            h = if t == "ds" { ds_block(h, round_ch(c, width), k, stride, se) }
                else { ir_block(h, round_ch(c, width), k, stride, e, se) } @"{j}";
        }
        feats = feats ++ [h];
    }
    conv_head = conv2d(h, out=round_ch(1280, width), k=1, bias=false);
    bn2 = bn_act(conv_head);
    classifier = linear(mean(bn2, axes=[2, 3]), out=num_classes);
    output logits = classifier;
    output features = [feats[1], feats[2], feats[4], feats[6]];   # strides 4, 8, 16, 32
}

# Published (pretrained-compatible) members: hand-set table from timm's _gen_efficientnet docstring.
model efficientnet_b0 = efficientnet(width=1.0, depth=1.0, res=224);
model efficientnet_b1 = efficientnet(width=1.0, depth=1.1, res=240);
model efficientnet_b2 = efficientnet(width=1.1, depth=1.2, res=260);
model efficientnet_b3 = efficientnet(width=1.2, depth=1.4, res=300);
model efficientnet_b4 = efficientnet(width=1.4, depth=1.8, res=380);
# Pure compound-scaling rule (paper: alpha=1.2 depth, beta=1.1 width, gamma=1.15 resolution), for new,
# untrained members. This does NOT reproduce the published B1..B7 checkpoints.
model efficientnet_phi(phi: int) = efficientnet(width=1.1 ** phi, depth=1.2 ** phi,
                                                res=round(224 * 1.15 ** phi / 8) * 8);
