bb 0.1;
# ConvNeXt family; naming follows timm/models/convnext.py so timm safetensors load strictly.

block mlp(x: tensor, hidden: int, out: int, conv: bool = false) -> tensor {
    # conv=true: 1x1 convs on NCHW (timm conv_mlp); conv=false: Linear on channels-last
    fc1 = if conv { conv2d(x, out=hidden, k=1) } else { linear(x, out=hidden) };
    act = gelu(fc1);
    fc2 = if conv { conv2d(act, out=out, k=1) } else { linear(act, out=out) };
    return fc2;
}

block convnext_block(x: tensor[B, C, H, W], k: int = 7, mlp_ratio: int = 4,
                     conv_mlp: bool = false, ls_init: float = 1e-6) -> tensor[B, C, H, W] {
    conv_dw = conv2d(x, out=C, k=k, pad=k // 2, groups=C);        # conv_dw.weight [C,1,k,k], .bias
    if conv_mlp {
        norm = layer_norm2d(conv_dw, eps=1e-6);                   # norm.weight/bias [C]
        y = mlp(norm, hidden=mlp_ratio * C, out=C, conv=true) @"mlp";
    } else {
        norm = layer_norm(permute(conv_dw, [0, 2, 3, 1]), eps=1e-6);
        y = permute(mlp(norm, hidden=mlp_ratio * C, out=C) @"mlp", [0, 3, 1, 2]);
    }
    param gamma: f32[C] = fill(ls_init);                           # layer scale
    return x + y * reshape(gamma, [1, C, 1, 1]);
}

block norm_head(x: tensor[B, C, H, W], num_classes: int) -> tensor[B, num_classes] {
    pooled = mean(x, axes=[2, 3], keepdim=true);                   # global_pool, no params
    norm = layer_norm2d(pooled, eps=1e-6);                         # head.norm.*
    fc = linear(flatten(norm, start=1), out=num_classes);          # head.fc.*
    return fc;
}

model convnext(depths: [int], dims: [int], conv_mlp: bool = false, k: int = 7,
               ls_init: float = 1e-6, num_classes: int = 1000) {
    input x: f32[B, 3, H, W];
    assert len(depths) == 4 && len(dims) == 4, "ConvNeXt has four stages";
    stem = x |> seq {                                  # stem.0 (4x4/s4 patchify), stem.1 (LN2d)
        conv2d(out=dims[0], k=4, s=4);
        layer_norm2d(eps=1e-6);
    };
    h = stem;
    feats = [];
    for s in 0..4 as "stages.{s}" {
        if s > 0 {                                     # stage 0 keeps stride 4: Identity, no keys
            downsample = h |> seq { layer_norm2d(eps=1e-6); conv2d(out=dims[s], k=2, s=2); };
            h = downsample;
        }
        for j in 0..depths[s] {
            h = convnext_block(h, k=k, conv_mlp=conv_mlp, ls_init=ls_init) @"blocks.{j}";
        }
        feats = feats ++ [h];                          # strides 4, 8, 16, 32
    }
    output logits = norm_head(h, num_classes) @"head";
    output features = feats;
    # To load original FB checkpoints instead of timm ones, map their spellings, e.g.:
    # rename "^downsample_layers\\.0\\." => "stem.";  rename "dwconv" => "conv_dw";
}

model convnext_atto = convnext(depths=[2, 2, 6, 2], dims=[40, 80, 160, 320], conv_mlp=true);
