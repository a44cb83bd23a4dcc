bb 0.1;
# RDN, Residual Dense Network — Zhang, Tian, Kong, Zhong, Fu, "Residual Dense Network for
# Image Super-Resolution", CVPR 2018, arXiv 1802.08797. (Not timm's `rdnet_*`, which is
# "DenseNets Reloaded", an ImageNet classifier.)
#
# Key-compatible with EDSR-PyTorch's `src/model/rdn.py` (the de-facto PyTorch RDN) and with
# the reference module in tools/reference/cases/rdn.py: SFENet1, SFENet2,
# RDBs.{i}.convs.{j}.conv.0, RDBs.{i}.LFF, GFF.0, GFF.1, UPNet.0, UPNet.2 (, UPNet.4 for x4).
# rdn_x2: 22,123,395 parameters; rdn_x3: 22,308,035; rdn_x4: 22,271,107 (D=16, C=8, G=64,
# G0=64, EDSR-PyTorch's config "B"). rdn_test (D=2, C=2, G=8, G0=8, x2): 7,971.
#
# The low-resolution image's height and width are size parameters: any image size works,
# e.g. `bbc run specs/rdn.bb --model rdn_x2 --dim H=120 --dim W=80 --input lr.png --output sr.png`.

# A residual dense block: C densely connected conv3x3+ReLU layers of growth G (layer c sees
# the block input and every earlier layer's output), a 1x1 local feature fusion back to G0
# channels, and the local residual.
block rdb(x: tensor[B, G0, H, W], G: int, C: int) -> tensor[B, G0, H, W] {
    h = x;
    for c in 0..C as "convs.{c}" {
        # EDSR-PyTorch's RDB_Conv: `conv = Sequential(Conv2d, ReLU)`, output concatenated.
        conv = h |> seq { conv2d(out=G, k=3, pad=1); relu(); };
        h = concat([h, conv], axis=1);
    }
    LFF = conv2d(h, out=G0, k=1);
    return LFF + x;
}

model rdn(scale: int = 2, D: int = 16, C: int = 8, G: int = 64, G0: int = 64,
          n_colors: int = 3, size: int = 48) {
    assert scale == 2 || scale == 3 || scale == 4, "RDN upsamples by 2, 3 or 4, not {scale}";
    input x: f32[B=1, n_colors, H=size, W=H];
    # Shallow feature extraction: F_-1 and F_0.
    SFENet1 = conv2d(x, out=G0, k=3, pad=1);
    SFENet2 = conv2d(SFENet1, out=G0, k=3, pad=1);
    h = SFENet2;
    features = [];
    for i in 0..D as "RDBs.{i}" {
        h = rdb(h, G, C) @_;
        features = features ++ [h];
    }
    # Global feature fusion (1x1 then 3x3 over all D block outputs) and the global residual.
    GFF = concat(features, axis=1) |> seq {
        conv2d(out=G0, k=1);
        conv2d(out=G0, k=3, pad=1);
    };
    h = GFF + SFENet1;
    # Sub-pixel up-sampler (ESPCN): x4 is two x2 stages, as in EDSR-PyTorch.
    UPNet = h |> seq {
        if scale == 4 {
            conv2d(out=G * 4, k=3, pad=1);
            pixel_shuffle(r=2);
            conv2d(out=G * 4, k=3, pad=1);
            pixel_shuffle(r=2);
        } else {
            conv2d(out=G * scale * scale, k=3, pad=1);
            pixel_shuffle(r=scale);
        }
        conv2d(out=n_colors, k=3, pad=1);
    };
    output sr = UPNet;
}

# The paper's final setting (EDSR-PyTorch config "B").
model rdn_x2 = rdn(scale=2);
model rdn_x3 = rdn(scale=3);
model rdn_x4 = rdn(scale=4);

# Tiny configurations for tests (same code paths, milliseconds to run), 8x8 inputs.
model rdn_test_x3 = rdn(D=2, C=2, G=8, G0=8, scale=3, size=8);
model rdn_test_x4 = rdn(D=2, C=2, G=8, G0=8, scale=4, size=8);
model rdn_test = rdn(D=2, C=2, G=8, G0=8, scale=2, size=8);
