bb 0.1;
# DenseNet — Huang, Liu, van der Maaten, Weinberger, "Densely Connected Convolutional
# Networks", CVPR 2017, arXiv 1608.06993.
#
# Key-compatible with torchvision's `DenseNet` (torchvision/models/densenet.py) and timm's
# (timm/models/densenet.py, same keys): checkpoints of densenet121, densenet169 and
# densenet201 load strictly. densenet121: 606 keys, 7,978,856 parameters.
# This is DenseNet-BC: 1x1 bottlenecks in the dense layers, transitions halve the channels.

# One dense layer (BN-ReLU-conv1x1-BN-ReLU-conv3x3) reads the concatenation of every
# earlier feature map of its block and adds `growth` new channels.
block dense_layer(feats: [tensor], growth: int, bn_size: int) -> tensor {
    norm1 = batch_norm2d(concat(feats, axis=1));
    conv1 = conv2d(relu(norm1), out=bn_size * growth, k=1, bias=false);
    norm2 = batch_norm2d(conv1);
    conv2 = conv2d(relu(norm2), out=growth, k=3, pad=1, bias=false);
    return conv2;
}

# A dense block: [x, y1, y2, ...] concatenated in that order, as torchvision does.
block dense_block(x: tensor, layers: int, growth: int, bn_size: int) -> tensor {
    feats = [x];
    for j in 0..layers as "denselayer{j + 1}" {
        y = dense_layer(feats, growth, bn_size) @_;
        feats = feats ++ [y];
    }
    return concat(feats, axis=1);
}

# Between blocks: BN-ReLU-conv1x1 to half the channels, then a 2x2 average pool.
block transition(x: tensor[B, C, H, W]) -> tensor {
    norm = batch_norm2d(x);
    conv = conv2d(relu(norm), out=C // 2, k=1, bias=false);
    return avg_pool2d(conv, k=2, s=2);
}

model densenet(growth: int = 32, blocks: [int] = [6, 12, 24, 16], init: int = 64,
               bn_size: int = 4, num_classes: int = 1000) {
    input x: f32[B=1, 3, H=224, W=224];
    # torchvision keeps everything up to the last BN in one nn.Sequential `features` with
    # named children (conv0, norm0, relu0, pool0, denseblock1, transition1, ..., norm5).
    scope "features" {
        conv0 = conv2d(x, out=init, k=7, s=2, pad=3, bias=false);
        norm0 = batch_norm2d(conv0);
        h = max_pool2d(relu(norm0), k=3, s=2, pad=1);
        for (i, n) in enumerate(blocks) {
            h = dense_block(h, n, growth, bn_size) @"denseblock{i + 1}";
            if i < len(blocks) - 1 {
                h = transition(h) @"transition{i + 1}";
            }
        }
        norm5 = batch_norm2d(h);
    }
    classifier = linear(mean(relu(norm5), axes=[2, 3]), out=num_classes);
    output logits = classifier;
}

# Tiny configuration for tests (torchvision `DenseNet(growth_rate=8, block_config=(2, 2),
# num_init_features=16, bn_size=4, num_classes=10)`).
model densenet_test = densenet(growth=8, blocks=[2, 2], init=16, num_classes=10);

# The paper's ImageNet models (Table 1), k = 32.
model densenet121 = densenet(blocks=[6, 12, 24, 16]);
model densenet169 = densenet(blocks=[6, 12, 32, 32]);
model densenet201 = densenet(blocks=[6, 12, 48, 32]);
