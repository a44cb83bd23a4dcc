bb 0.1;
# ConvNeXt — Liu, Mao, Wu, Feichtenhofer, Darrell, Xie, "A ConvNet for the 2020s",
# CVPR 2022, arXiv 2201.03545.
#
# Key-compatible with timm's `ConvNeXt` (timm/models/convnext.py): checkpoints of
# convnext_atto, _femto, _pico, _nano (1x1-conv MLP) and convnext_tiny, _small, _base
# (Linear MLP over channels-last tokens) load strictly. convnext_atto: 128 keys, 3,695,520
# parameters.

# One block: 7x7 depthwise conv -> LayerNorm -> MLP (4x) -> layer scale -> residual.
# `conv_mlp` picks timm's two spellings of the same function: 1x1 convs on NCHW, or
# Linear layers on NHWC tokens (which changes the MLP's weight shapes in the checkpoint).
block convnext_block(x: tensor[B, C, H, W], conv_mlp: bool, ls_init: float = 1e-6) -> tensor[B, C, H, W] {
    conv_dw = conv2d(x, out=C, k=7, pad=3, groups=C);
    param gamma: f32[C] = fill(ls_init);
    if conv_mlp {
        norm = layer_norm2d(conv_dw, eps=1e-6);
        scope "mlp" {
            fc1 = conv2d(norm, out=4 * C, k=1);
            fc2 = conv2d(gelu(fc1), out=C, k=1);
        }
        y = fc2 * reshape(gamma, [C, 1, 1]);
    } else {
        norm = layer_norm(permute(conv_dw, [0, 2, 3, 1]), eps=1e-6);
        scope "mlp" {
            fc1 = linear(norm, out=4 * C);
            fc2 = linear(gelu(fc1), out=C);
        }
        y = permute(fc2 * gamma, [0, 3, 1, 2]);
    }
    return x + drop_path(y, p=0.0);
}

# A stage: an optional downsample (LayerNorm2d + 2x2 stride-2 conv), then `depth` blocks.
block convnext_stage(x: tensor[B, C, H, W], out: int, depth: int, conv_mlp: bool) -> tensor {
    h = x;
    if C != out {
        downsample = x |> seq { layer_norm2d(eps=1e-6); conv2d(out=out, k=2, s=2); };
        h = downsample;
    }
    for j in 0..depth as "blocks.{j}" {
        h = convnext_block(h, conv_mlp) @_;
    }
    return h;
}

model convnext(depths: [int] = [3, 3, 9, 3], dims: [int] = [96, 192, 384, 768],
               num_classes: int = 1000, conv_mlp: bool = false) {
    assert len(depths) == 4 && len(dims) == 4, "ConvNeXt has four stages";
    input x: f32[B=1, 3, H=224, W=224];
    stem = x |> seq { conv2d(out=dims[0], k=4, s=4); layer_norm2d(eps=1e-6); };
    h = stem;
    for i in 0..4 as "stages.{i}" {
        h = convnext_stage(h, dims[i], depths[i], conv_mlp) @_;
    }
    scope "head" {
        pooled = mean(h, axes=[2, 3], keepdim=true);
        norm = layer_norm2d(pooled, eps=1e-6);
        fc = linear(flatten(norm, start=1), out=num_classes);
    }
    output logits = fc;
}

# Tiny configurations for tests (same code paths as the family, milliseconds to run).
model convnext_test = convnext(depths=[1, 1, 1, 1], dims=[8, 16, 32, 64], num_classes=10, conv_mlp=true);
model convnext_test_linear = convnext(depths=[1, 1, 1, 1], dims=[8, 16, 32, 64], num_classes=10);

# The timm family.
model convnext_femto = convnext(depths=[2, 2, 6, 2], dims=[48, 96, 192, 384], conv_mlp=true);
model convnext_pico = convnext(depths=[2, 2, 6, 2], dims=[64, 128, 256, 512], conv_mlp=true);
model convnext_nano = convnext(depths=[2, 2, 8, 2], dims=[80, 160, 320, 640], conv_mlp=true);
model convnext_tiny = convnext(depths=[3, 3, 9, 3], dims=[96, 192, 384, 768]);
model convnext_small = convnext(depths=[3, 3, 27, 3], dims=[96, 192, 384, 768]);
model convnext_base = convnext(depths=[3, 3, 27, 3], dims=[128, 256, 512, 1024]);
model convnext_atto = convnext(depths=[2, 2, 6, 2], dims=[40, 80, 160, 320], conv_mlp=true);
