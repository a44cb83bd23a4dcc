bb 0.1;
# Haar wavelet backbones.
#
# WaveCNet — Li, Shen, Guo, Lai, "Wavelet Integrated CNNs for Noise-Robust Image
# Classification", CVPR 2020, arXiv 2005.03337. A ResNet whose downsampling is the Haar DWT
# keeping only the low-frequency band LL (their `Downsample`, `DWT_2D_tiny`); the detail bands,
# where noise concentrates, are dropped. Relative to torchvision's ResNet (`pool_only=True`):
#   * the 3x3/s2 max-pool after the stem becomes `maxpool` = DWT-LL (the 7x7/s2 stem conv stays);
#   * a block's stride-2 3x3 conv becomes DWT-LL then a stride-1 3x3 conv (`conv2.0`, `conv2.1`;
#     in WaveCNet the stride moves from conv1 to conv2);
#   * a stride-2 1x1 shortcut becomes DWT-LL then a stride-1 1x1 conv + BN (`downsample.0..2`).
# The parameters are ResNet's: wavecnet_resnet18 has 11,689,512 (102 keys without
# `num_batches_tracked`). Key-compatible with `LiQiufu/WaveCNet` `models_dwt/resnet.py`
# (`resnet18(wavename='haar')`, BasicBlock models).
#
# Note: for Haar, LL = 2 x the 2x2 mean (orthonormal filters), so DWT-LL is avg_pool2d(k=2)
# scaled by 2, not average pooling itself.

# WaveCNet's `Downsample`: the LL band, channel 4c of haar_dwt (bands are grouped per channel).
block dwt_ll(x: tensor[B, C, H, W]) -> tensor[B, C, H // 2, W // 2] {
    return slice(haar_dwt(x), axis=1, start=0, end=4 * C, step=4);
}

block basic_block(x: tensor[B, C, H, W], planes: int, stride: int = 1) -> tensor {
    assert stride == 1 || stride == 2, "WaveCNet blocks downsample by 2, got stride {stride}";
    conv1 = conv2d(x, out=planes, k=3, pad=1, bias=false);
    bn1 = batch_norm2d(conv1);
    if stride == 1 {
        conv2 = conv2d(relu(bn1), out=planes, k=3, pad=1, bias=false);
    } else {
        conv2 = relu(bn1) |> seq { dwt_ll; conv2d(out=planes, k=3, pad=1, bias=false); };
    }
    bn2 = batch_norm2d(conv2);
    shortcut = x;
    if stride != 1 || C != planes {
        downsample = x |> seq {
            if stride == 2 { dwt_ll; }
            conv2d(out=planes, k=1, bias=false);
            batch_norm2d();
        };
        shortcut = downsample;
    }
    return relu(bn2 + shortcut);
}

model wavecnet(layers: [int] = [2, 2, 2, 2], width: int = 64, num_classes: int = 1000,
               img: int = 224) {
    input x: f32[B=1, 3, H=img, W=H];
    assert H % 32 == 0 && W % 32 == 0, "WaveCNet halves the input five times: {H}x{W}";
    conv1 = conv2d(x, out=width, k=7, s=2, pad=3, bias=false);
    bn1 = batch_norm2d(conv1);
    h = dwt_ll(relu(bn1));                  # WaveCNet's `maxpool`
    for (i, n) in enumerate(layers) {
        scope "layer{i + 1}" {
            for j in 0..n as "{j}" {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                h = basic_block(h, width * 2 ** i, stride) @_;
            }
        }
    }
    fc = linear(mean(h, axes=[2, 3]), out=num_classes);
    output logits = fc;
}

model wavecnet_resnet18 = wavecnet(layers=[2, 2, 2, 2]);
model wavecnet_resnet34 = wavecnet(layers=[3, 4, 6, 3]);
# Tiny configuration for tests: widths 8..64, 10 classes, 32x32 input (spatial 16, 8, 4, 2, 1).
model wavecnet_test = wavecnet(layers=[1, 1, 1, 1], width=8, num_classes=10, img=32);

# The transform and its inverse: y.0 = haar_idwt(haar_dwt(x)) (equal to x up to rounding),
# y.1 = haar_dwt(x), [B, 4C, H/2, W/2] with channel 4c+k = band k (LL, LH, HL, HH) of channel c.
model haar_roundtrip(channels: int = 3) {
    input x: f32[B=2, channels, H=8, W=12];
    bands = haar_dwt(x);
    output y = [haar_idwt(bands), bands];
}
