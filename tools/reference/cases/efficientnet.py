"""EfficientNet reference cases (specs/efficientnet.bb): timm's `EfficientNet` class.

* ``efficientnet_test``: the tiny configuration of research note A7b, built with timm's own
  builder from block strings (stem 8; ds k3 s1 -> 8, ir e2 k3 s2 -> 16, ir e2 k5 s2 -> 24;
  head 32; 10 classes): 4,858 parameters, 64 keys (without ``num_batches_tracked``).
  Input 2x3x32x32.
* ``efficientnet_b0``: ``timm.create_model('efficientnet_b0')`` (5,288,548 parameters) at input
  1x3x64x64.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import timm
import torch
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.efficientnet import EfficientNet

from make_fixtures import (BASE_SEED, count_params, randomise_state_dict, seeded_input,
                           write_case)

SPEC = "specs/efficientnet.bb"

TEST_ARCH = [
    ["ds_r1_k3_s1_e1_c8_se0.25"],
    ["ir_r1_k3_s2_e2_c16_se0.25"],
    ["ir_r1_k5_s2_e2_c24_se0.25"],
]


def _n_keys(model: torch.nn.Module) -> int:
    """State-dict keys bbc knows: timm's less BatchNorm's ``num_batches_tracked``."""
    return sum(1 for k in model.state_dict() if not k.endswith("num_batches_tracked"))


def case_efficientnet_test(out: Path) -> None:
    seed = BASE_SEED + 701
    model = EfficientNet(block_args=decode_arch_def(TEST_ARCH, 1.0), stem_size=8, num_features=32,
                         num_classes=10, act_layer=torch.nn.SiLU,
                         round_chs_fn=partial(round_channels, multiplier=1.0, divisor=8))
    assert count_params(model) == 4_858, count_params(model)
    assert _n_keys(model) == 64, _n_keys(model)
    weights = randomise_state_dict(model, seed)
    write_case(out, "efficientnet_test", model=model, weights=weights,
               spec=SPEC, bbc_model="efficientnet_test",
               dims={"B": 2, "H": 32, "W": 32}, inputs={"x": seeded_input((2, 3, 32, 32), seed)},
               output_name="logits", tolerance=1e-4,
               reference=f"timm {timm.__version__} EfficientNet(decode_arch_def({TEST_ARCH}), "
                         f"stem_size=8, num_features=32, num_classes=10, act_layer=SiLU), random "
                         f"weights (seed {seed}), torch {torch.__version__} f32 CPU")


def case_efficientnet_b0(out: Path) -> None:
    seed = BASE_SEED + 702
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=1000)
    assert count_params(model) == 5_288_548, count_params(model)
    assert _n_keys(model) == 311, _n_keys(model)
    weights = randomise_state_dict(model, seed)
    write_case(out, "efficientnet_b0", model=model, weights=weights,
               spec=SPEC, bbc_model="efficientnet_b0",
               dims={"H": 64, "W": 64}, inputs={"x": seeded_input((1, 3, 64, 64), seed)},
               output_name="logits", tolerance=1e-4,
               reference=f"timm {timm.__version__} efficientnet_b0(num_classes=1000), random "
                         f"weights (seed {seed}), torch {torch.__version__} "
                         f"f32 CPU")


CASES = {
    "efficientnet_test": case_efficientnet_test,
    "efficientnet_b0": case_efficientnet_b0,
}
