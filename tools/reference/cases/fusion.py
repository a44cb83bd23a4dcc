"""Reference cases for specs/fff.bb (FPN-style multi-level feature fusion, optional BiFPN
weighting) and specs/cbnet.bb (CBNetV2 DHLC composite backbones).

The torch modules below are written from the definitions (Lin et al. 2017, arXiv
1612.03144; Tan et al. 2020, arXiv 1911.09070; Liang et al. 2021, arXiv 2107.00420) with
exactly the spec's state-dict key names. The FPN neck is additionally checked against
`torchvision.ops.FeaturePyramidNetwork` itself (same keys, same shapes, bit-identical
outputs), and `fpn_neck_test` uses torchvision's module directly as its reference.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.ops import FeaturePyramidNetwork

from make_fixtures import (BASE_SEED, WeightRecipe, count_params, seeded_input,
                           uniform_range_for, write_case)

# Seeds of this family: BASE_SEED + 500 + n (away from the other families' + 1, + 2, ...).
SEED0 = BASE_SEED + 500


def weight_range(key: str, like: torch.Tensor) -> tuple[float, float]:
    """make_fixtures' ranges, plus U(0.5, 1.5) for BiFPN `edge_weights`."""
    return (0.5, 1.5) if key.endswith("edge_weights") else uniform_range_for(key, like)


def weight_recipe(model: nn.Module, seed: int) -> WeightRecipe:
    return WeightRecipe.for_model(model, seed, weight_range)


# --------------------------------------------------------------------------------------
# FFF: backbone + FPN neck (torchvision names) with optional fast normalised fusion
# --------------------------------------------------------------------------------------


class DownBlock(nn.Module):
    """conv3x3/s2 - BN - ReLU - conv3x3 - BN - ReLU (specs/fff.bb `down_block`)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class Body(nn.Module):
    def __init__(self, widths: list[int]):
        super().__init__()
        chans = [3] + widths
        self.stages = nn.ModuleList(DownBlock(chans[i], chans[i + 1]) for i in range(len(widths)))

    def forward(self, x):
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class FastNormalizedFusion(nn.Module):
    """EfficientDet fast normalised fusion: w = ReLU(edge_weights),
    out = sum_i x_i * w_i / (sum_j w_j + eps) (as effdet's FpnCombine 'fastattn')."""

    def __init__(self, n: int, eps: float = 1e-4):
        super().__init__()
        self.eps = eps
        self.edge_weights = nn.Parameter(torch.ones(n))

    def forward(self, xs):
        w = F.relu(self.edge_weights)
        s = torch.sum(w)
        return torch.stack([x * w[i] / (s + self.eps) for i, x in enumerate(xs)], dim=-1).sum(-1)


class FPNNeck(nn.Module):
    """FPN top-down fusion with torchvision's attribute names; `bifpn` replaces the sum
    of each fusion node by fast normalised fusion of [lateral, top-down]."""

    def __init__(self, in_channels: list[int], out: int, bifpn: bool = False):
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, out, 1)) for c in in_channels)
        self.layer_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(out, out, 3, padding=1))
                                          for _ in in_channels)
        if bifpn:
            self.fusions = nn.ModuleList(FastNormalizedFusion(2) for _ in in_channels[:-1])
        self.bifpn = bifpn

    def forward(self, feats):
        n = len(feats)
        last = self.inner_blocks[n - 1](feats[n - 1])
        results = [self.layer_blocks[n - 1](last)]
        for i in range(n - 2, -1, -1):
            lateral = self.inner_blocks[i](feats[i])
            top_down = F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            last = self.fusions[i]([lateral, top_down]) if self.bifpn else lateral + top_down
            results.insert(0, self.layer_blocks[i](last))
        return results


class FFFNet(nn.Module):
    def __init__(self, widths: list[int], out: int, bifpn: bool):
        super().__init__()
        self.body = Body(widths)
        self.fpn = FPNNeck(widths, out, bifpn)

    def forward(self, x):
        return self.fpn(self.body(x))


class TorchvisionNeck(FeaturePyramidNetwork):
    """torchvision's FPN itself (keys unchanged), called with four positional levels."""

    def forward(self, c2, c3, c4, c5):
        out = super().forward(OrderedDict([("c2", c2), ("c3", c3), ("c4", c4), ("c5", c5)]))
        return list(out.values())


def check_against_torchvision(neck: FPNNeck, in_channels: list[int], out: int,
                              feats: list[torch.Tensor]) -> None:
    """The non-BiFPN neck must be torchvision's FeaturePyramidNetwork: same keys and shapes,
    loads strictly, bit-identical outputs."""
    tv = FeaturePyramidNetwork(in_channels, out)
    mine = {k: tuple(v.shape) for k, v in neck.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in tv.state_dict().items()}
    assert mine == theirs, (mine, theirs)
    tv.load_state_dict(neck.state_dict(), strict=True)
    tv.eval()
    neck.eval()
    with torch.no_grad():
        a = neck(feats)
        b = list(tv(OrderedDict((str(i), f) for i, f in enumerate(feats))).values())
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y), float((x - y).abs().max())


def _fff(out_dir: Path, case: str, bifpn: bool, seed: int) -> None:
    widths, out = [8, 16, 32], 8
    model = FFFNet(widths, out, bifpn)
    neck_params = count_params(model.fpn)
    assert neck_params == 2_224 + (4 if bifpn else 0), neck_params
    assert count_params(model) == 20_520 + (4 if bifpn else 0), count_params(model)
    weights = weight_recipe(model, seed)
    if bifpn:
        # One negative raw weight, so the ReLU matters: level 0 then ignores its top-down
        # input (level 1 still fuses both, so every parameter reaches some output).
        weights.values("fpn.fusions.0.edge_weights", [1.2, -0.3])
    weights.apply(model)
    model.eval()
    # 30x26 input: levels 15x13, 8x7, 4x4, so the top-down resize is size-matched, not 2x.
    x = seeded_input((2, 3, 30, 26), seed)
    if not bifpn:
        with torch.no_grad():
            feats = model.body(x)
        check_against_torchvision(model.fpn, widths, out, feats)
    write_case(out_dir, case, model=model, weights=weights, spec="specs/fff.bb", bbc_model=case,
               dims={"B": 2, "H": 30, "W": 26}, inputs={"x": x}, output_name="features",
               tolerance=1e-4,
               reference=f"tools/reference/cases/fusion.py FFFNet(widths={widths}, out={out}, "
                         f"bifpn={bifpn}); neck checked equal to torchvision "
                         f"{torchvision.__version__} FeaturePyramidNetwork; random weights "
                         f"(seed {seed}), torch {torch.__version__} f32 CPU")


def case_fpn_test(out: Path) -> None:
    _fff(out, "fpn_test", bifpn=False, seed=SEED0 + 1)


def case_fff_bifpn_test(out: Path) -> None:
    _fff(out, "fff_bifpn_test", bifpn=True, seed=SEED0 + 2)


def case_fpn_neck_test(out: Path) -> None:
    seed = SEED0 + 3
    chans, width = [8, 16, 32, 64], 8
    model = TorchvisionNeck(chans, width)
    assert count_params(model) == 3_328, count_params(model)
    assert count_params(FeaturePyramidNetwork([256, 512, 1024, 2048], 256)) == 3_344_384
    weights = weight_recipe(model, seed)
    weights.apply(model)
    # 15x13 -> 8x7 -> 4x4 -> 2x2, as the spec's input dims derive them.
    sizes = [(15, 13), (8, 7), (4, 4), (2, 2)]
    inputs = {f"c{i + 2}": seeded_input((2, c, h, w), seed + i)
              for i, (c, (h, w)) in enumerate(zip(chans, sizes))}
    # Our own neck, loaded with torchvision's weights, agrees with it exactly.
    mine = FPNNeck(chans, width)
    mine.load_state_dict(model.state_dict(), strict=True)
    check_against_torchvision(mine, chans, width, list(inputs.values()))
    write_case(out, "fpn_neck_test", model=model, weights=weights, spec="specs/fff.bb",
               bbc_model="fpn_neck_test",
               dims={"B": 2, "H": 15, "W": 13}, inputs=inputs, output_name="features",
               tolerance=1e-4,
               reference=f"torchvision {torchvision.__version__} "
                         f"ops.FeaturePyramidNetwork({chans}, {width}), random weights "
                         f"(seed {seed}), torch {torch.__version__} f32 CPU")


# --------------------------------------------------------------------------------------
# CBNetV2: K ResNet-style backbones with DHLC composite connections (official names)
# --------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class CBSubnet(nn.Module):
    """One ResNet-style backbone, mmdet names; `stem=False` for backbones k > 0, which
    take the shared stem output instead (official cb_del_stages = 0)."""

    def __init__(self, stem_ch: int, widths: list[int], layers: list[int], stem: bool):
        super().__init__()
        if stem:
            self.conv1 = nn.Conv2d(3, stem_ch, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_ch)
        cin = stem_ch
        for i, (w, n) in enumerate(zip(widths, layers)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, w, (1 if i == 0 else 2) if j == 0 else 1))
                cin = w
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x, cb_feats=None, pre_outs=None):
        if hasattr(self, "conv1"):
            x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        else:
            x = pre_outs[0]
        outs, spatial = [x], []
        for i in range(4):
            spatial.append(x.shape[2:])
            if cb_feats is not None:
                x = x + cb_feats[i]
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs, spatial


class CBNetDHLC(nn.Module):
    def __init__(self, K: int, stem_ch: int, widths: list[int], layers: list[int]):
        super().__init__()
        self.cb_modules = nn.ModuleList(CBSubnet(stem_ch, widths, layers, stem=(k == 0))
                                        for k in range(K))
        inplanes = [stem_ch] + widths
        self.cb_linears = nn.ModuleList()
        if K > 1:
            for i in range(4):
                self.cb_linears.append(nn.ModuleList(
                    nn.Sequential(nn.Conv2d(inplanes[i + j + 1], inplanes[i], 1, bias=False),
                                  nn.BatchNorm2d(inplanes[i]))
                    for j in range(4 - i)))

    def _cb_feats(self, feats, spatial):
        cb = []
        for i in range(4):
            feeds = [F.interpolate(self.cb_linears[i][j](feats[i + j + 1]), size=tuple(spatial[i]),
                                   mode="nearest") for j in range(4 - i)]
            cb.append(torch.sum(torch.stack(feeds, dim=-1), dim=-1))
        return cb

    def forward(self, x):
        outs_list, cb_feats, pre = [], None, None
        for k, module in enumerate(self.cb_modules):
            pre, spatial = module(x, cb_feats, pre)
            outs_list.append(pre[1:])
            if k < len(self.cb_modules) - 1:
                cb_feats = self._cb_feats(pre, spatial)
        return outs_list


def _cbnet(out_dir: Path, case: str, K: int, params: int, batch: int, size: int, seed: int) -> None:
    model = CBNetDHLC(K, 8, [8, 16, 32, 64], [1, 1, 1, 1])
    assert count_params(model) == params, count_params(model)
    assert count_params(model.cb_linears) == 5_680, count_params(model.cb_linears)
    weights = weight_recipe(model, seed)
    weights.apply(model)
    dims = {"H": size, "W": size} if batch == 1 else {"B": batch, "H": size, "W": size}
    write_case(out_dir, case, model=model, weights=weights, spec="specs/cbnet.bb", bbc_model=case,
               dims=dims,
               inputs={"x": seeded_input((batch, 3, size, size), seed)}, output_name="features",
               tolerance=1e-4,
               reference=f"tools/reference/cases/fusion.py CBNetDHLC(K={K}, stem 8, basic "
                         f"[1,1,1,1], widths 8..64; official VDIGPKU/CBNetV2 CBResNet names, "
                         f"cb_del_stages=0, shared cb_linears), random weights (seed {seed}), "
                         f"torch {torch.__version__} f32 CPU")


def case_cbnet_test(out: Path) -> None:
    # 60x60: stem 15x15, layers 15, 8, 4, 2 -- the composite links resize 2->4->8->15.
    _cbnet(out, "cbnet_test", K=2, params=161_112, batch=2, size=60, seed=SEED0 + 4)


def case_cbnet_triple_test(out: Path) -> None:
    # K=3: the shared links are applied twice (after backbone 0 and after backbone 1).
    _cbnet(out, "cbnet_triple_test", K=3, params=238_232, batch=1, size=64, seed=SEED0 + 5)


CASES = {
    "fpn_test": case_fpn_test,
    "fff_bifpn_test": case_fff_bifpn_test,
    "fpn_neck_test": case_fpn_neck_test,
    "cbnet_test": case_cbnet_test,
    "cbnet_triple_test": case_cbnet_triple_test,
}
