# Inline snippets from dsl-anchors.md section 5(e) and the comment in 5(a), wrapped in items.
block vgg_features(x: tensor, cfg: [int]) -> tensor {
    features = x |> seq { for v in cfg { if v == 0 { max_pool2d(k=2, s=2); } else { conv2d(out=v, k=3, pad=1); relu(); } } };
    return features;
}

block resnet_stages(x: tensor, depths: [int]) -> tensor {
    h = x;
    for i in 0..4 as "layer{i + 1}" {
        h = stage(h, depths[i]);
    }
    return h;
}

block fpn(feats: [tensor], n: int) -> [tensor] {
    laterals = [conv2d(f, out=256, k=1) @"lateral_convs.{i}.conv" for (i, f) in enumerate(feats)];
    outs = laterals;
    for i in reversed(0..n - 1) {
        outs = outs ++ [upsample(outs[i + 1], size=(H, W)) + laterals[i]];
    }
    return outs;
}

block cbnet_links(planes: [int]) -> layer {
    scope "cb_linears" {
        for i in 0..len(planes) {
            for j in 0..i {
                lin = seq { conv2d(out=planes[i], k=1, bias=false); batch_norm2d(); } @"{i}.{j}";
            }
        }
    }
    return lin;
}

model densenet(growth: int = 32) {
    input x: f32[B=1, 3, H=224, W];
    scope "features" {
        h = dense_block(x, growth) @"denseblock{i + 1}";
    }
    output y = h;
    rename "^downsample_layers\\.0\\." => "stem.";  rename "dwconv" => "conv_dw";
    ignore "num_batches_tracked$";
}
