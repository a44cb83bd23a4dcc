bb 0.1;
# ResNet — He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
# arXiv 1512.03385.
#
# Key-compatible with timm's `ResNet` (timm/models/resnet.py; torchvision's resnet* has the
# same keys): checkpoints of resnet18, resnet34 (basic blocks) and resnet50, resnet101
# (bottlenecks) load strictly. resnet18: 102 keys, 11,689,512 parameters.
#
# Like timm and torchvision, the bottleneck is "ResNet v1.5": the stride sits in the 3x3
# conv, not in the first 1x1 as in the paper.

# Every conv of a ResNet: "same" padding, no bias (a BatchNorm follows).
block conv(x: tensor, out: int, k: int, s: int = 1) -> tensor {
    return conv2d(x, out=out, k=k, s=s, pad=k // 2, bias=false);
}

# Two 3x3 convs (ResNet-18/34). Output width: planes.
block basic_block(x: tensor, planes: int, stride: int) -> tensor {
    conv1 = conv(x, planes, 3, stride);
    bn1 = batch_norm2d(conv1);
    conv2 = conv(relu(bn1), planes, 3);
    bn2 = batch_norm2d(conv2);
    return bn2;
}

# 1x1 reduce -> 3x3 (strided) -> 1x1 expand (ResNet-50/101). Output width: 4 * planes.
block bottleneck(x: tensor, planes: int, stride: int) -> tensor {
    conv1 = conv(x, planes, 1);
    bn1 = batch_norm2d(conv1);
    conv2 = conv(relu(bn1), planes, 3, stride);
    bn2 = batch_norm2d(conv2);
    conv3 = conv(relu(bn2), 4 * planes, 1);
    bn3 = batch_norm2d(conv3);
    return bn3;
}

# One residual unit: the branch plus the identity, or a strided 1x1 conv + BN projection
# (timm's `downsample`, an nn.Sequential) where the shape changes.
block residual(x: tensor[B, C, H, W], bottle: bool, planes: int, stride: int) -> tensor {
    let out = if bottle { 4 * planes } else { planes };
    y = if bottle { bottleneck(x, planes, stride) @_ } else { basic_block(x, planes, stride) @_ };
    shortcut = x;
    if stride != 1 || C != out {
        downsample = x |> seq { conv2d(out=out, k=1, s=stride, bias=false); batch_norm2d(); };
        shortcut = downsample;
    }
    return relu(y + shortcut);
}

# The stem is always 64 wide: timm's `stem_width` only applies to its deep stems.
model resnet(layers: [int] = [2, 2, 2, 2], bottle: bool = false,
             channels: [int] = [64, 128, 256, 512], num_classes: int = 1000) {
    assert len(layers) == len(channels), "one depth per stage";
    input x: f32[B=1, 3, H=224, W=224];
    conv1 = conv2d(x, out=64, k=7, s=2, pad=3, bias=false);
    bn1 = batch_norm2d(conv1);
    h = max_pool2d(relu(bn1), k=3, s=2, pad=1);
    for (i, n) in enumerate(layers) {
        # Stage 1 keeps the resolution (the max pool already halved it); later stages halve
        # it in their first block.
        for j in 0..n as "layer{i + 1}.{j}" {
            let stride = if i > 0 && j == 0 { 2 } else { 1 };
            h = residual(h, bottle, channels[i], stride) @_;
        }
    }
    fc = linear(mean(h, axes=[2, 3]), out=num_classes);
    output logits = fc;
}

# Tiny configurations for tests (timm `ResNet(block=..., layers=(1,1,1,1),
# channels=(8,16,32,64), num_classes=10)`); stage 1 needs a projection from the 64-wide stem.
model resnet_test = resnet(layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], num_classes=10);
model resnet_test_bottleneck = resnet(layers=[1, 1, 1, 1], bottle=true, channels=[8, 16, 32, 64],
                                      num_classes=10);

# The paper's family (Table 1).
model resnet18 = resnet(layers=[2, 2, 2, 2]);
model resnet34 = resnet(layers=[3, 4, 6, 3]);
model resnet50 = resnet(layers=[3, 4, 6, 3], bottle=true);
model resnet101 = resnet(layers=[3, 4, 23, 3], bottle=true);
