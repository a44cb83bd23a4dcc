"""Reference cases for the pyramid / multi-scale family: specs/poapl.bb (PSPNet pyramid
pooling + CBAM, "PoAPL") and specs/multiscale.bb (Res2Net).

* ``PoAPL`` below is a short torch module written from the PSPNet description (Zhao et al.
  2017, arXiv 1612.01105; official hszhao/semseg ordering: input first, then the branches)
  followed by timm's ``CbamModule``.  Its attribute names give the state-dict keys
  ``ppm.stages.{i}.conv/bn``, ``ppm.bottleneck.conv/bn``, ``cbam.channel.fc1/fc2``,
  ``cbam.spatial.conv.conv/bn``.
* Res2Net cases use timm's own ``ResNet`` + ``Bottle2neck``.

Used by tools/reference/make_fixtures.py (``--only poapl_test`` etc.).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import timm
from timm.layers.cbam import CbamModule
from timm.models.res2net import Bottle2neck
from timm.models.resnet import ResNet

from make_fixtures import (BASE_SEED, count_params, randomise_state_dict, seeded_input,
                           write_case)


# --------------------------------------------------------------------------------------
# PoAPL = PSPNet pyramid pooling module (+ 3x3 fuse conv) -> CBAM
# --------------------------------------------------------------------------------------


class PPMStage(nn.Module):
    """One pyramid level: AdaptiveAvgPool(bins) -> 1x1 conv (no bias) -> BN -> ReLU ->
    bilinear upsample (align_corners=True) back to the input size."""

    def __init__(self, in_ch: int, out_ch: int, bins: int):
        super().__init__()
        self.bins = bins
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = F.relu(self.bn(self.conv(F.adaptive_avg_pool2d(x, self.bins))))
        return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=True)


class ConvBN(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, k: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class PyramidPooling(nn.Module):
    """PSPNet PPM: concat([x, stage_1(x), ..., stage_n(x)]) -> 3x3 conv -> BN -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, bins=(1, 2, 3, 6)):
        super().__init__()
        assert in_ch % len(bins) == 0
        red = in_ch // len(bins)
        self.stages = nn.ModuleList([PPMStage(in_ch, red, b) for b in bins])
        self.bottleneck = ConvBN(2 * in_ch, out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([x] + [s(x) for s in self.stages], dim=1)
        return F.relu(self.bottleneck(feats))


class PoAPL(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, bins=(1, 2, 3, 6)):
        super().__init__()
        self.ppm = PyramidPooling(in_ch, out_ch, bins)
        self.cbam = CbamModule(out_ch)  # rd_ratio 1/16, rd_divisor 1, 7x7 spatial conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbam(self.ppm(x))


def _poapl(out: Path, case: str, h: int, w: int, seed: int) -> None:
    model = PoAPL(16, 16)
    assert count_params(model) == 5_060, count_params(model)
    weights = randomise_state_dict(model, seed)
    write_case(out, case, model=model, weights=weights,
               spec="specs/poapl.bb", bbc_model="poapl_test",
               dims={"H": h, "W": w}, inputs={"x": seeded_input((1, 16, h, w), seed)},
               output_name="y", tolerance=1e-4,
               reference=f"tools/reference/cases/pyramid.py PoAPL(16, 16) = PSPNet PPM (bins 1,2,3,6) "
                         f"+ timm {timm.__version__} CbamModule(16), random weights (seed {seed}), "
                         f"torch {torch.__version__} f32 CPU")


def case_poapl_test(out: Path) -> None:
    _poapl(out, "poapl_test", 12, 12, BASE_SEED + 101)


def case_poapl_test_odd(out: Path) -> None:
    # 13 x 10: overlapping adaptive-pool bins and non-integer bilinear ratios.
    _poapl(out, "poapl_test_odd", 13, 10, BASE_SEED + 102)


# --------------------------------------------------------------------------------------
# Res2Net (timm)
# --------------------------------------------------------------------------------------


def _res2net_tiny() -> nn.Module:
    return ResNet(block=Bottle2neck, layers=(1, 1, 1, 1), stem_width=16,
                  channels=(16, 32, 64, 128), base_width=26, block_args=dict(scale=4),
                  num_classes=10)


def case_res2net_test(out: Path) -> None:
    seed = BASE_SEED + 103
    model = _res2net_tiny()  # timm's 7x7 stem ignores stem_width: it is 64 wide
    assert count_params(model) == 501_299, count_params(model)
    weights = randomise_state_dict(model, seed)
    write_case(out, "res2net_test", model=model, weights=weights,
               spec="specs/multiscale.bb", bbc_model="res2net_test",
               dims={"B": 2, "H": 48, "W": 48}, inputs={"x": seeded_input((2, 3, 48, 48), seed)},
               output_name="logits", tolerance=1e-4,
               reference=f"timm {timm.__version__} ResNet(block=Bottle2neck, layers=(1,1,1,1), "
                         f"channels=(16,32,64,128), base_width=26, scale=4, num_classes=10), random "
                         f"weights (seed {seed}), torch {torch.__version__} f32 CPU")


def case_res2net_test_stem16(out: Path) -> None:
    """The research note's tiny config (stem 16): timm's plain stem cannot be narrowed, so
    the stem and the first block are swapped for 16-wide ones (that block then has a 1x1
    projection and a stride-1 average pool on its last group)."""
    seed = BASE_SEED + 104
    model = _res2net_tiny()
    model.conv1 = nn.Conv2d(3, 16, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(16)
    down = nn.Sequential(nn.Conv2d(16, 64, 1, stride=1, bias=False), nn.BatchNorm2d(64))
    model.layer1[0] = Bottle2neck(16, 16, stride=1, downsample=down, base_width=26, scale=4,
                                  norm_layer=nn.BatchNorm2d)
    assert count_params(model) == 494_147, count_params(model)
    weights = randomise_state_dict(model, seed)
    write_case(out, "res2net_test_stem16", model=model, weights=weights, spec="specs/multiscale.bb",
               bbc_model="res2net_test_stem16", dims={"H": 40, "W": 40},
               inputs={"x": seeded_input((1, 3, 40, 40), seed)}, output_name="logits",
               tolerance=1e-4,
               reference=f"timm {timm.__version__} ResNet(block=Bottle2neck, layers=(1,1,1,1), "
                         f"channels=(16,32,64,128), base_width=26, scale=4, num_classes=10) with a "
                         f"16-wide 7x7 stem and layer1.0 rebuilt for 16 input channels, random "
                         f"weights (seed {seed}), torch {torch.__version__} f32 CPU")


def case_res2net50_26w_4s(out: Path) -> None:
    seed = BASE_SEED + 105
    model = timm.create_model("res2net50_26w_4s", pretrained=False, num_classes=1000)
    assert count_params(model) == 25_699_120, count_params(model)
    weights = randomise_state_dict(model, seed)
    write_case(out, "res2net50_26w_4s", model=model, weights=weights, spec="specs/multiscale.bb",
               bbc_model="res2net50_26w_4s", dims={"H": 64, "W": 64},
               inputs={"x": seeded_input((1, 3, 64, 64), seed)}, output_name="logits",
               tolerance=1e-4,
               reference=f"timm {timm.__version__} res2net50_26w_4s(num_classes=1000), random "
                         f"weights (seed {seed}), torch {torch.__version__} f32 CPU")


CASES = {
    "poapl_test": case_poapl_test,
    "poapl_test_odd": case_poapl_test_odd,
    "res2net_test": case_res2net_test,
    "res2net_test_stem16": case_res2net_test_stem16,
    "res2net50_26w_4s": case_res2net50_26w_4s,
}
