bb 0.1;
# CBNet — composite backbones.
#   CBNet:   Liu, Wang, Liang, Tang, Chu, Yu, Ling, "CBNet: A Novel Composite Backbone
#            Network Architecture for Object Detection", AAAI 2020, arXiv 1909.03625.
#   CBNetV2: Liang, Chu, Liu, Wang, Tang, Ling, "CBNet: A Composite Backbone Network
#            Architecture for Object Detection", IEEE TIP 2022, arXiv 2107.00420.
#
# K identical ResNet-style backbones run one after another. Before residual layer i of
# backbone k > 0, the outputs of backbone k-1 are fed in through *composite connections*.
# This file implements CBNetV2's default, Dense Higher-Level Composition (DHLC):
#   input_k^i += sum_{j=0}^{3-i} resize_nearest(BN(conv1x1(out_{k-1}^{i+j+1})), size of input_k^i)
# where out^0 is the stem output and out^1..out^4 those of layer1..layer4, so layer i is
# fed every previous-backbone level from its own output level up to the coarsest.
#
# Key-compatible with the official `CBResNet` (VDIGPKU/CBNetV2,
# mmdet/models/backbones/cbnet.py, mmdet 2.x ResNet naming), with cb_del_stages = 0:
# * `cb_modules.{k}.conv1` / `.bn1` — the stem (7x7/s2 conv, BN, ReLU, 3x3/s2 max pool).
#   Only backbone 0 owns one; the others reuse its output (the official code deletes their
#   `conv1` and reads `pre_outs[0]`).
# * `cb_modules.{k}.layer{i+1}.{j}.conv1/bn1/conv2/bn2[/conv3/bn3]/downsample.{0,1}` —
#   basic or bottleneck (stride on the 3x3 conv, mmdet's style="pytorch") blocks.
# * `cb_linears.{i}.{j}.0` (1x1 conv, no bias) and `.1` (BN): the link into layer i from
#   previous-backbone level i+j+1, mapping its channels to layer i's input width. They exist
#   once and are applied after every backbone but the last (shared over k).
# The official module keeps an unused `bn1` in every backbone k > 0 (it deletes only
# `conv1`); this spec does not declare it, and `ignore`s it when loading a checkpoint.
#
# Output: `features.{k}.{l}` = output of layer l+1 of backbone k (all four levels of every
# backbone, as the official forward returns them). Detection heads use the last (lead)
# backbone, `features.{K-1}.*`; the assisting ones feed CBNetV2's auxiliary loss in training.
#
# Parameters: Dual-ResNet-50 DHLC (no FC) 51,845,952, 4,839,424 in the links; Triple 75,344,448
# (one shared link set); Dual ResNet-tiny (basic [1,1,1,1], widths 8..64) 161,112, links 5,680.

# torchvision/mmdet BasicBlock (expansion 1).
block basic_block(x: tensor[B, C, H, W], planes: int, stride: int = 1) -> tensor {
    conv1 = conv2d(x, out=planes, k=3, s=stride, pad=1, bias=false);
    bn1 = batch_norm2d(conv1);
    conv2 = conv2d(relu(bn1), out=planes, k=3, pad=1, bias=false);
    bn2 = batch_norm2d(conv2);
    shortcut = x;
    if stride != 1 || C != planes {
        downsample = x |> seq { conv2d(out=planes, k=1, s=stride, bias=false); batch_norm2d(); };
        shortcut = downsample;
    }
    return relu(bn2 + shortcut);
}

# mmdet Bottleneck, style="pytorch" (the stride sits on the 3x3 conv), expansion 4.
block bottleneck(x: tensor[B, C, H, W], planes: int, stride: int = 1) -> tensor {
    conv1 = conv2d(x, out=planes, k=1, bias=false);
    bn1 = batch_norm2d(conv1);
    conv2 = conv2d(relu(bn1), out=planes, k=3, s=stride, pad=1, bias=false);
    bn2 = batch_norm2d(conv2);
    conv3 = conv2d(relu(bn2), out=4 * planes, k=1, bias=false);
    bn3 = batch_norm2d(conv3);
    shortcut = x;
    if stride != 1 || C != 4 * planes {
        downsample = x |> seq { conv2d(out=4 * planes, k=1, s=stride, bias=false); batch_norm2d(); };
        shortcut = downsample;
    }
    return relu(bn3 + shortcut);
}

# One residual layer (an nn.Sequential of blocks, numbered from 0); the first block
# carries the stride.
block res_layer(x: tensor, planes: int, depth: int, stride: int, use_bottleneck: bool) -> tensor {
    h = x;
    for j in 0..depth as "{j}" {
        let s = if j == 0 { stride } else { 1 };
        h = if use_bottleneck { bottleneck(h, planes, s) @_ } else { basic_block(h, planes, s) @_ };
    }
    return h;
}

model cbnet(K: int = 2, layers: [int] = [3, 4, 6, 3], stem: int = 64,
            widths: [int] = [64, 128, 256, 512], use_bottleneck: bool = true, img: int = 224) {
    assert K >= 1, "CBNet needs at least one backbone";
    assert len(layers) == 4 && len(widths) == 4, "four residual layers";
    # The official module's unused stem norm of the assisting/lead backbones k > 0.
    ignore "^cb_modules\.[1-9][0-9]*\.bn1\.";
    input x: f32[B=1, 3, H=img, W=img];
    let expansion = if use_bottleneck { 4 } else { 1 };
    # Channels of out^0 (stem) .. out^4 (layer4): mmdet's `cb_inplanes`.
    let cb_inplanes = [stem] ++ [w * expansion for w in widths];

    # The DHLC links as layer values: created here once (so their keys are
    # `cb_linears.{i}.{j}.*`) and applied after every backbone but the last, which shares
    # their weights across k, as the official module does.
    links = [];
    if K > 1 {
        for i in 0..4 as "cb_linears.{i}" {
            row = [];
            for j in 0..4 - i {
                link = seq { conv2d(out=cb_inplanes[i], k=1, bias=false); batch_norm2d(); } @"{j}";
                row = row ++ [link];
            }
            links = links ++ [row];
        }
    }

    features = [];
    prev = [];                      # out^0 .. out^4 of the previous backbone
    for k in 0..K as "cb_modules.{k}" {
        if k == 0 {
            conv1 = conv2d(x, out=stem, k=7, s=2, pad=3, bias=false);
            bn1 = batch_norm2d(conv1);
            h = max_pool2d(relu(bn1), k=3, s=2, pad=1);
        } else {
            h = prev[0];            # the stem is computed once and shared
        }
        outs = [h];
        for i in 0..4 {
            if k > 0 {
                # Dense higher-level composition: every previous-backbone level from i+1
                # up, projected to this input's width and resized to its size.
                let size = shape(h);
                feed = none;
                for j in 0..4 - i {
                    fed = links[i][j](prev[i + j + 1]);
                    up = upsample(fed, size=(size[2], size[3]), mode="nearest");
                    feed = if j == 0 { up } else { feed + up };
                }
                h = h + feed;
            }
            let stride = if i == 0 { 1 } else { 2 };
            h = res_layer(h, widths[i], layers[i], stride, use_bottleneck) @"layer{i + 1}";
            outs = outs ++ [h];
        }
        prev = outs;
        features = features ++ [[outs[l] for l in 1..5]];   # layer1..layer4
    }
    output features = features;
}

# Tiny configurations for tests: ResNet-tiny (basic blocks [1, 1, 1, 1], stem 8, widths
# 8/16/32/64) at 64x64 input (the stem brings it to 16x16; layer4 runs at 2x2).
model cbnet_test = cbnet(K=2, layers=[1, 1, 1, 1], stem=8, widths=[8, 16, 32, 64],
                         use_bottleneck=false, img=64);
model cbnet_triple_test = cbnet(K=3, layers=[1, 1, 1, 1], stem=8, widths=[8, 16, 32, 64],
                                use_bottleneck=false, img=64);

# Canonical: CBNetV2 Dual-ResNet-50 and Triple-ResNet-50 (DHLC) backbones.
model cbnet_dual_resnet50 = cbnet(K=2);
model cbnet_triple_resnet50 = cbnet(K=3);
