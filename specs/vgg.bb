bb 0.1;
# VGG — Simonyan, Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
# Recognition", ICLR 2015, arXiv 1409.1556.
#
# Key-compatible with torchvision's `VGG` (torchvision/models/vgg.py): checkpoints of vgg11,
# vgg13, vgg16 and vgg19 load strictly. vgg11: 22 keys, 132,863,336 parameters.
# (timm's vgg* replaces the classifier by a conv MLP, with other keys.)

# The paper's Table 1, one row per configuration: 3x3 convs in each of the five stages.
# Every stage ends in a 2x2 max pool; the stage widths are `widths`.
let CONVS_A = [1, 1, 2, 2, 2];   # VGG-11
let CONVS_B = [2, 2, 2, 2, 2];   # VGG-13
let CONVS_D = [2, 2, 3, 3, 3];   # VGG-16
let CONVS_E = [2, 2, 4, 4, 4];   # VGG-19

model vgg(convs: [int] = CONVS_A, widths: [int] = [64, 128, 256, 512, 512], fc: int = 4096,
          num_classes: int = 1000) {
    assert len(convs) == len(widths), "one conv count per stage";
    input x: f32[B=1, 3, H=224, W=224];
    # torchvision's `make_layers`: one flat nn.Sequential, so every ReLU and pool takes an
    # index (the convs of VGG-11 are features.0, .3, .6, .8, ...).
    features = x |> seq {
        for (n, w) in zip(convs, widths) {
            for _ in 0..n { conv2d(out=w, k=3, pad=1); relu(); }
            max_pool2d(k=2, s=2);
        }
    };
    # Fixed 7x7 grid, whatever the input size (at 224 it is the identity).
    avgpool = adaptive_avg_pool2d(features, size=(7, 7));
    classifier = flatten(avgpool) |> seq {
        linear(out=fc); relu(); dropout(p=0.5);
        linear(out=fc); relu(); dropout(p=0.5);
        linear(out=num_classes);
    };
    output logits = classifier;
}

# Tiny configuration for tests: VGG-11 with every width / 8 and 64-wide FC layers, on
# 32x32 inputs in the tests (the 1x1 feature map is replicated to 7x7 by the adaptive pool).
model vgg_test = vgg(widths=[8, 16, 32, 64, 64], fc=64, num_classes=10);

model vgg11 = vgg(convs=CONVS_A);
model vgg13 = vgg(convs=CONVS_B);
model vgg16 = vgg(convs=CONVS_D);
model vgg19 = vgg(convs=CONVS_E);
