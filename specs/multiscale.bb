bb 0.1;
# Res2Net — Gao, Cheng, Zhao, Zhang, Yang, Torr, "Res2Net: A New Multi-scale Backbone
# Architecture", TPAMI 2019, arXiv 1904.01169. The "multi-scale structure" of the zoo: inside
# each bottleneck the 3x3 conv is replaced by `scale` groups of `width` channels, convolved
# hierarchically (each group also sees the previous group's output), which gives one block
# many receptive-field sizes.
#
# Key-compatible with timm's `ResNet` built from `Bottle2neck` (timm/models/res2net.py,
# timm/models/resnet.py): checkpoints of res2net50_26w_4s, _26w_6s, _26w_8s, _48w_2s, _14w_8s,
# res2net101_26w_4s, res2next50 and (deep stem, average-pool shortcut) res2net50d and
# res2net101d load strictly. res2net50_26w_4s: 427 keys (not counting BatchNorm's
# `num_batches_tracked`, which the loader skips), 25,699,120 parameters.

# Res2Net bottleneck (timm `Bottle2neck`). width = floor(planes * base_width / 64) * cardinality.
# 1x1 conv -> BN -> ReLU -> split into `scale` groups x_1..x_s of `width` channels;
# y_1 = K_1(x_1), y_i = K_i(x_i + y_{i-1}) with K_i = 3x3 conv (stride) -> BN -> ReLU, for the
# first s-1 groups; the last group passes through (y_s = x_s). The first block of a stage
# ("stage" type: stride 2 or a projection shortcut) drops the hierarchical adds and average-pools
# the last group (3x3, stride, pad 1, count_include_pad=True) instead. Then concat -> 1x1 conv
# -> BN, + shortcut, ReLU.
block bottle2neck(x: tensor[B, C, H, W], planes: int, stride: int, base_width: int, scale: int,
                  cardinality: int, avg_down: bool) -> tensor {
    let width = floor(planes * (base_width / 64.0)) * cardinality;
    let outplanes = 4 * planes;
    let is_first = stride > 1 || C != outplanes;
    conv1 = conv2d(x, out=width * scale, k=1, bias=false);
    bn1 = batch_norm2d(conv1);
    spx = split(relu(bn1), [width for i in 0..scale], axis=1);
    spo = [];
    sp = spx[0];
    for i in 0..max(1, scale - 1) {
        sp = if i == 0 || is_first { spx[i] } else { sp + spx[i] };
        conv = conv2d(sp, out=width, k=3, s=stride, pad=1, groups=cardinality, bias=false) @"convs.{i}";
        bn = batch_norm2d(conv) @"bns.{i}";
        sp = relu(bn);
        spo = spo ++ [sp];
    }
    if scale > 1 {
        spo = spo ++ [if is_first { avg_pool2d(spx[-1], k=3, s=stride, pad=1) } else { spx[-1] }];
    }
    conv3 = conv2d(concat(spo, axis=1), out=outplanes, k=1, bias=false);
    bn3 = batch_norm2d(conv3);
    shortcut = x;
    if is_first {
        if avg_down {
            # timm `downsample_avg`: [AvgPool2d(2, stride, ceil_mode=True,
            # count_include_pad=False) or Identity] -> 1x1 conv -> BN (keys downsample.1, .2).
            # ceil_mode only differs from floor on odd sizes, which bbc cannot express.
            assert stride == 1 || (H % 2 == 0 && W % 2 == 0),
                "avg_down shortcut needs an even feature map, got {H}x{W} (timm uses ceil_mode)";
            downsample = x |> seq {
                if stride > 1 { avg_pool2d(k=2, s=stride, count_include_pad=false); } else { identity(); }
                conv2d(out=outplanes, k=1, bias=false);
                batch_norm2d();
            };
        } else {
            downsample = x |> seq {
                conv2d(out=outplanes, k=1, s=stride, bias=false);
                batch_norm2d();
            };
        }
        shortcut = downsample;
    }
    return relu(bn3 + shortcut);
}

# ResNet skeleton (timm `ResNet`): stem -> 3x3/s2 max pool -> four stages of bottlenecks
# (stride 2 in the first block of stages 2-4, in the 3x3 convs) -> global average pool -> fc.
# Stem: a 7x7/s2 conv of `stem_width` channels (timm always uses 64 here), or with `deep_stem`
# timm's three 3x3 convs (stem_width, stem_width, 2 * stem_width) as `conv1.0/.1/.3/.4/.6`.
model res2net(layers: [int] = [3, 4, 6, 3], channels: [int] = [64, 128, 256, 512],
              base_width: int = 26, scale: int = 4, cardinality: int = 1,
              stem_width: int = 64, deep_stem: bool = false, avg_down: bool = false,
              num_classes: int = 1000) {
    assert len(layers) == len(channels), "one width per stage";
    assert scale >= 1 && cardinality >= 1;
    input x: f32[B=1, 3, H=224, W=224];
    if deep_stem {
        conv1 = x |> seq {
            conv2d(out=stem_width, k=3, s=2, pad=1, bias=false);
            batch_norm2d();
            relu();
            conv2d(out=stem_width, k=3, pad=1, bias=false);
            batch_norm2d();
            relu();
            conv2d(out=2 * stem_width, k=3, pad=1, bias=false);
        };
    } else {
        conv1 = conv2d(x, out=stem_width, k=7, s=2, pad=3, bias=false);
    }
    bn1 = batch_norm2d(conv1);
    h = max_pool2d(relu(bn1), k=3, s=2, pad=1);
    for (i, n) in enumerate(layers) {
        scope "layer{i + 1}" {
            for j in 0..n as "{j}" {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                h = bottle2neck(h, channels[i], stride, base_width, scale, cardinality, avg_down) @_;
            }
        }
    }
    fc = linear(mean(h, axes=[2, 3]), out=num_classes);
    output logits = fc;
}

# Tiny configurations for tests. timm's 7x7 stem is always 64 wide, so in res2net_test the
# first block of layer1 has no projection and takes the hierarchical path (widths 6/13/26/52):
# timm ResNet(block=Bottle2neck, layers=(1,1,1,1), channels=(16,32,64,128), base_width=26,
# block_args=dict(scale=4), num_classes=10), 501,299 parameters. res2net_test_stem16 is the
# research note's tiny config (stem 16, 494,147 parameters): every block is then a "stage"
# block, layer1's with stride 1 (a 1x1 projection and a stride-1 average pool).
model res2net_test = res2net(layers=[1, 1, 1, 1], channels=[16, 32, 64, 128], num_classes=10);
model res2net_test_stem16 = res2net_test(stem_width=16);

# The timm family (parameters as in timm; keys without `num_batches_tracked`).
model res2net50_48w_2s = res2net(base_width=48, scale=2);           # 25,287,304, 267 keys
model res2net50_14w_8s = res2net(base_width=14, scale=8);           # 25,059,816, 747 keys
model res2net50_26w_6s = res2net(base_width=26, scale=6);           # 37,051,448, 587 keys
model res2net50_26w_8s = res2net(base_width=26, scale=8);           # 48,403,776, 747 keys
model res2net101_26w_4s = res2net(layers=[3, 4, 23, 3]);            # 45,206,688, 852 keys
model res2next50 = res2net(base_width=4, scale=4, cardinality=8);   # 24,671,464, 427 keys
model res2net50d = res2net(stem_width=32, deep_stem=true, avg_down=true);          # 25,718,352
model res2net101d = res2net(layers=[3, 4, 23, 3], stem_width=32, deep_stem=true,
                            avg_down=true);                                          # 45,225,920
model res2net50_26w_4s = res2net(base_width=26, scale=4);           # 25,699,120, 427 keys
