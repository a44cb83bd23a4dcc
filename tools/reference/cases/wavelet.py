"""Haar wavelet reference cases (specs/wavelet.bb and the ops `haar_dwt` / `haar_idwt`).

The DWT here is plain torch slicing arithmetic, written from the definition (research note A6)
and checked against PyWavelets before any case is written:

* ``haar_dwt(x)``: [..., C, H, W] -> [..., 4C, H/2, W/2]; channel 4c+k is band k of channel c,
  bands in ``pywt.dwt2(x, 'haar')`` order and signs (cA, cH, cV, cD). ``haar_idwt`` inverts it.

Cases:

* ``wavelet_pywt``: not a model case (no ``case.json``; ``tests/reference.rs`` skips it).
  PyWavelets' own ``dwt2`` / ``idwt2`` on random arrays, read by ``tests/wavelet.rs``:
  ``<name>.x.npy`` and ``<name>.cA|cH|cV|cD.npy`` (``pywt.dwt2(x, 'haar')``, computed in f64 from
  the f32 input, rounded to f32) for names ``a`` [1,2,4,6] and ``b`` [2,3,8,8]; ``inv.cA|cH|cV|cD``
  random bands [2,2,3,5] and ``inv.x.npy`` = ``pywt.idwt2`` of them.
* ``wavelet_wavecnet_test``: WaveCNet's ResNet (Li, Shen, Guo, Lai, CVPR 2020, arXiv 2005.03337;
  ``LiQiufu/WaveCNet`` ``models_dwt/resnet.py`` with ``pool_only=True``, ``wavename='haar'``)
  with BasicBlock layers [1,1,1,1], widths 8..64, 10 classes. Input 2x3x32x32.
* ``wavelet_haar_roundtrip``: y.0 = idwt(dwt(x)), y.1 = dwt(x) for x [2,3,8,12].
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import numpy as np
import pywt
import torch
import torch.nn as nn

from make_fixtures import (BASE_SEED, WeightRecipe, count_params, randomise_state_dict,
                           seeded_input, write_case)

SPEC = "specs/wavelet.bb"
PYWT = f"PyWavelets {version('PyWavelets')}"


# --------------------------------------------------------------------------------------
# The transform, from the definition
# --------------------------------------------------------------------------------------


def haar_dwt(x: torch.Tensor) -> torch.Tensor:
    """For each 2x2 block a b / c d: LL=(a+b+c+d)/2, LH=(a+b-c-d)/2, HL=(a-b+c-d)/2,
    HH=(a-b-c+d)/2 (= pywt cA, cH, cV, cD), stacked per channel: channel 4c+k is band k."""
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    bands = [(a + b + c + d) / 2, (a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2]
    return torch.stack(bands, dim=-3).flatten(-4, -3)


def haar_idwt(y: torch.Tensor) -> torch.Tensor:
    *lead, c4, h, w = y.shape
    q = y.reshape(*lead, c4 // 4, 4, h, w)
    ll, lh, hl, hh = q.unbind(-3)
    out = y.new_empty(*lead, c4 // 4, 2 * h, 2 * w)
    out[..., 0::2, 0::2] = (ll + lh + hl + hh) / 2
    out[..., 0::2, 1::2] = (ll + lh - hl - hh) / 2
    out[..., 1::2, 0::2] = (ll - lh + hl - hh) / 2
    out[..., 1::2, 1::2] = (ll - lh - hl + hh) / 2
    return out


def check_against_pywt() -> None:
    """The torch definition above is PyWavelets' transform (order, signs, scale)."""
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 10))
    cA, (cH, cV, cD) = pywt.dwt2(x, "haar", axes=(-2, -1))
    ours = haar_dwt(torch.from_numpy(x)).numpy().reshape(2, 3, 4, 3, 5)
    for k, band in enumerate((cA, cH, cV, cD)):
        assert np.abs(ours[:, :, k] - band).max() < 1e-12, k
    back = haar_idwt(haar_dwt(torch.from_numpy(x))).numpy()
    assert np.abs(back - x).max() < 1e-12
    assert np.abs(pywt.idwt2((cA, (cH, cV, cD)), "haar", axes=(-2, -1)) - x).max() < 1e-12


# --------------------------------------------------------------------------------------
# PyWavelets fixtures for tests/wavelet.rs
# --------------------------------------------------------------------------------------


def case_wavelet_pywt(out: Path) -> None:
    check_against_pywt()
    folder = out / "wavelet_pywt"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.npy"):
        stale.unlink()
    rng = np.random.default_rng(BASE_SEED + 901)
    worst_f32 = 0.0
    for name, shape in (("a", (1, 2, 4, 6)), ("b", (2, 3, 8, 8))):
        x = rng.standard_normal(shape).astype(np.float32)
        np.save(folder / f"{name}.x.npy", x)
        cA, details = pywt.dwt2(x.astype(np.float64), "haar", axes=(-2, -1))
        f32 = pywt.dwt2(x, "haar", axes=(-2, -1))  # pywt's own float32 path, for the record
        for band, v, v32 in zip(("cA", "cH", "cV", "cD"), (cA, *details), (f32[0], *f32[1])):
            np.save(folder / f"{name}.{band}.npy", v.astype(np.float32))
            worst_f32 = max(worst_f32, float(np.abs(v32.astype(np.float64) - v).max()))
    bands = [rng.standard_normal((2, 2, 3, 5)).astype(np.float32) for _ in range(4)]
    for band, v in zip(("cA", "cH", "cV", "cD"), bands):
        np.save(folder / f"inv.{band}.npy", v)
    x = pywt.idwt2((bands[0].astype(np.float64), tuple(b.astype(np.float64) for b in bands[1:])),
                   "haar", axes=(-2, -1))
    np.save(folder / "inv.x.npy", x.astype(np.float32))
    (folder / "README.md").write_text(
        "PyWavelets reference data for `tests/wavelet.rs` (not a `case.json` model case).\n"
        "Written by `tools/reference/cases/wavelet.py` (`--only wavelet_pywt`) with "
        f"{PYWT}, numpy {np.__version__}.\n\n"
        "* `a.*` ([1,2,4,6]) and `b.*` ([2,3,8,8]): `x` (float32, N(0,1)) and "
        "`cA, (cH, cV, cD) = pywt.dwt2(x, 'haar', axes=(-2, -1))` computed in float64 from "
        "the float32 `x` and rounded to float32.\n"
        "* `inv.*`: random float32 bands [2,2,3,5] and `inv.x = pywt.idwt2((cA, (cH, cV, cD)), "
        "'haar')` computed in float64, rounded to float32.\n")
    print(f"{'wavelet_pywt':32s} pywt float32 path vs float64: max |diff| {worst_f32:.1e}")


# --------------------------------------------------------------------------------------
# WaveCNet ResNet (key-compatible with LiQiufu/WaveCNet models_dwt/resnet.py)
# --------------------------------------------------------------------------------------


class Downsample(nn.Module):
    """WaveCNet's `Downsample` (DWT_2D_tiny): the LL band of the Haar DWT."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return haar_dwt(x)[:, 0::4]


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes) if stride == 1 else nn.Sequential(
            Downsample(), conv3x3(planes, planes))
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            layers = [Downsample()] if stride == 2 else []
            layers += [nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)]
            self.downsample = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class WaveCNetResNet(nn.Module):
    """WaveCNet ResNet with BasicBlocks, `pool_only=True`: the stem keeps the 7x7 stride-2
    conv, the max-pool becomes Downsample, every stride-2 3x3 conv becomes Downsample + a
    stride-1 conv, every stride-2 1x1 shortcut becomes Downsample + a stride-1 1x1 conv."""

    def __init__(self, layers: list[int], width: int = 64, num_classes: int = 1000):
        super().__init__()
        planes = [width * 2 ** i for i in range(4)]
        self.conv1 = nn.Conv2d(3, planes[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.Sequential(Downsample())
        inplanes = planes[0]
        for i, (p, n) in enumerate(zip(planes, layers)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(inplanes, p, 2 if i > 0 and j == 0 else 1))
                inplanes = p
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def n_keys(model: nn.Module) -> int:
    """State-dict keys bbc knows: all but BatchNorm's ``num_batches_tracked``."""
    return sum(1 for k in model.state_dict() if not k.endswith("num_batches_tracked"))


def param_counts() -> None:
    """Counts for tests/fixtures/param_counts.tsv (`python -c` this to reprint them)."""
    for name, layers, width, classes in (("wavecnet_resnet18", [2, 2, 2, 2], 64, 1000),
                                         ("wavecnet_resnet34", [3, 4, 6, 3], 64, 1000),
                                         ("wavecnet_test", [1, 1, 1, 1], 8, 10)):
        m = WaveCNetResNet(layers, width, classes)
        print(f"{SPEC}\t{name}\t-\t{count_params(m)}\t{n_keys(m)}")


def case_wavecnet_test(out: Path) -> None:
    seed = BASE_SEED + 902
    model = WaveCNetResNet([1, 1, 1, 1], width=8, num_classes=10)
    assert count_params(model) == 78_962, count_params(model)
    assert n_keys(model) == 62, n_keys(model)
    weights = randomise_state_dict(model, seed)
    write_case(out, "wavelet_wavecnet_test", model=model, weights=weights,
               spec=SPEC, bbc_model="wavecnet_test",
               dims={"B": 2, "H": 32, "W": 32}, inputs={"x": seeded_input((2, 3, 32, 32), seed)},
               output_name="logits", tolerance=1e-4,
               reference=f"tools/reference/cases/wavelet.py WaveCNetResNet(layers=[1,1,1,1], "
                         f"width=8, num_classes=10) (LiQiufu/WaveCNet resnet, haar, pool_only), "
                         f"torch-slicing DWT checked against {PYWT}, random weights (seed {seed}), "
                         f"torch {torch.__version__} f32 CPU")


class HaarRoundtrip(nn.Module):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        bands = haar_dwt(x)
        return [haar_idwt(bands), bands]


def case_haar_roundtrip(out: Path) -> None:
    seed = BASE_SEED + 903
    write_case(out, "wavelet_haar_roundtrip", model=HaarRoundtrip(), weights=WeightRecipe(seed),
               spec=SPEC, bbc_model="haar_roundtrip",
               dims={"B": 2, "H": 8, "W": 12}, inputs={"x": seeded_input((2, 3, 8, 12), seed)},
               output_name="y", tolerance=1e-5,
               reference=f"tools/reference/cases/wavelet.py HaarRoundtrip: [idwt(dwt(x)), dwt(x)], "
                         f"torch-slicing DWT checked against {PYWT}, torch {torch.__version__} "
                         f"f32 CPU")


CASES = {
    "wavelet_pywt": case_wavelet_pywt,
    "wavelet_wavecnet_test": case_wavecnet_test,
    "wavelet_haar_roundtrip": case_haar_roundtrip,
}
