"""Reference cases for RDN, the Residual Dense Network: specs/rdn.bb.

Zhang, Tian, Kong, Zhong, Fu, "Residual Dense Network for Image Super-Resolution", CVPR 2018,
arXiv 1802.08797. No package on PyPI ships RDN, so the reference module below is written from
the paper's definition (research note §A8), with the module and attribute names of
EDSR-PyTorch's ``src/model/rdn.py`` (the de-facto PyTorch RDN, whose checkpoints therefore
load into specs/rdn.bb by name):

* ``SFENet1``: conv3x3 (n_colors -> G0) = F_-1; ``SFENet2``: conv3x3 (G0 -> G0) = F_0.
* ``RDBs`` (ModuleList of D): ``RDBs.{i}.convs`` = Sequential of C ``RDB_Conv``, each
  ``conv = Sequential(Conv2d(G0 + c*G -> G, 3x3), ReLU)`` whose output is concatenated onto
  its input; ``RDBs.{i}.LFF``: conv1x1 (G0 + C*G -> G0); the block adds its input back.
* ``GFF = Sequential(conv1x1 (D*G0 -> G0), conv3x3 (G0 -> G0))`` over the concatenated block
  outputs, plus the global residual F_-1.
* ``UPNet``: x2/x3: conv3x3 (G0 -> G*r^2), PixelShuffle(r), conv3x3 (G -> n_colors);
  x4: conv3x3 (G0 -> 4G), PS(2), conv3x3 (G -> 4G), PS(2), conv3x3 (G -> n_colors).

Every conv has a bias; there is no mean-shift layer and no activation outside the RDB convs.
The canonical configurations (D=16, C=8, G=64, G0=64, EDSR-PyTorch config "B") are checked
by parameter count only (22,123,395 / 22,308,035 / 22,271,107 for x2 / x3 / x4): their
weights (85 MB in f32) are too big to commit. Fixtures are the tiny configurations.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from make_fixtures import BASE_SEED, count_params, randomise_state_dict, seeded_input, write_case

SEED = BASE_SEED + 800  # this family's seeds: SEED + 0, 1, 2, ...
VERSIONS = f"torch {torch.__version__} f32 CPU"


class RDB_Conv(nn.Module):
    def __init__(self, in_channels: int, growth: int, k: int = 3):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, growth, k, padding=(k - 1) // 2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv(x)), 1)


class RDB(nn.Module):
    def __init__(self, G0: int, G: int, C: int, k: int = 3):
        super().__init__()
        self.convs = nn.Sequential(*[RDB_Conv(G0 + c * G, G, k) for c in range(C)])
        self.LFF = nn.Conv2d(G0 + C * G, G0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LFF(self.convs(x)) + x


class RDN(nn.Module):
    def __init__(self, scale: int, D: int = 16, C: int = 8, G: int = 64, G0: int = 64,
                 n_colors: int = 3, k: int = 3):
        super().__init__()
        assert scale in (2, 3, 4), scale
        self.D = D
        pad = (k - 1) // 2
        self.SFENet1 = nn.Conv2d(n_colors, G0, k, padding=pad)
        self.SFENet2 = nn.Conv2d(G0, G0, k, padding=pad)
        self.RDBs = nn.ModuleList([RDB(G0, G, C, k) for _ in range(D)])
        self.GFF = nn.Sequential(nn.Conv2d(D * G0, G0, 1), nn.Conv2d(G0, G0, k, padding=pad))
        if scale == 4:
            self.UPNet = nn.Sequential(
                nn.Conv2d(G0, G * 4, k, padding=pad), nn.PixelShuffle(2),
                nn.Conv2d(G, G * 4, k, padding=pad), nn.PixelShuffle(2),
                nn.Conv2d(G, n_colors, k, padding=pad))
        else:
            self.UPNet = nn.Sequential(
                nn.Conv2d(G0, G * scale * scale, k, padding=pad), nn.PixelShuffle(scale),
                nn.Conv2d(G, n_colors, k, padding=pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f_1 = self.SFENet1(x)
        h = self.SFENet2(f_1)
        outs = []
        for block in self.RDBs:
            h = block(h)
            outs.append(h)
        h = self.GFF(torch.cat(outs, 1)) + f_1
        return self.UPNet(h)


# The parameter counts of the research note (§A8), checked against this module.
CANONICAL = {2: 22_123_395, 3: 22_308_035, 4: 22_271_107}
TEST = {2: 7_971, 3: 10_891, 4: 10_307}


def check_canonical_counts() -> None:
    for scale, n in CANONICAL.items():
        assert count_params(RDN(scale)) == n, (scale, count_params(RDN(scale)))
    # Config "A" (the paper's ablation size), x2.
    assert count_params(RDN(2, D=20, C=6, G=32)) == 5_541_795


def _rdn_test(out: Path, case: str, scale: int, seed: int) -> None:
    check_canonical_counts()
    model = RDN(scale, D=2, C=2, G=8, G0=8)
    assert count_params(model) == TEST[scale], count_params(model)
    assert len(model.state_dict()) == (26 if scale == 4 else 24), len(model.state_dict())
    weights = randomise_state_dict(model, seed)
    write_case(out, case, model=model, weights=weights, spec="specs/rdn.bb", bbc_model=case,
               dims={"H": 8, "W": 8}, inputs={"x": seeded_input((1, 3, 8, 8), seed)},
               output_name="sr", tolerance=1e-4,
               reference=f"tools/reference/cases/rdn.py RDN(scale={scale}, D=2, C=2, G=8, G0=8) "
                         f"(EDSR-PyTorch naming), random weights (seed {seed}), {VERSIONS}")


def case_rdn_test(out: Path) -> None:
    _rdn_test(out, "rdn_test", 2, SEED)


def case_rdn_test_x3(out: Path) -> None:
    _rdn_test(out, "rdn_test_x3", 3, SEED + 1)


def case_rdn_test_x4(out: Path) -> None:
    _rdn_test(out, "rdn_test_x4", 4, SEED + 2)


CASES = {
    "rdn_test": case_rdn_test,
    "rdn_test_x3": case_rdn_test_x3,
    "rdn_test_x4": case_rdn_test_x4,
}
