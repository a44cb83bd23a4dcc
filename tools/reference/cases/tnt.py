"""TNT (Transformer in Transformer) reference fixtures: timm's `TNT` class, non-legacy.

Case `tnt_test`: the tiny configuration of specs/tnt.bb (research note A4), 32,586 params.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import timm
from timm.models.tnt import TNT

from make_fixtures import BASE_SEED, WeightRecipe, count_params, seeded_input, write_case

# Constructor arguments of the tiny test model (specs/tnt.bb `tnt_test`).
TEST_ARGS = dict(img_size=32, patch_size=8, embed_dim=32, inner_dim=8, depth=2,
                 num_heads_inner=2, num_heads_outer=2, num_classes=10)


def case_tnt_test(out: Path) -> None:
    seed = BASE_SEED + 401
    model = TNT(**TEST_ARGS)
    assert not model.pixel_embed.legacy
    sd = model.state_dict()
    assert len(sd) == 73, len(sd)
    assert count_params(model) == 32_586, count_params(model)
    weights = WeightRecipe.for_model(model, seed)
    # The generic rule gives the learned position embeddings and the class token
    # std 1/sqrt(fan_in) (~0.04 for patch_pos): too small to reveal a wrong layout.
    # Make them O(1) (std 1) so that a transposed or misplaced addition changes the logits.
    for name in ("cls_token", "patch_pos", "pixel_pos"):
        weights.uniform(name, -math.sqrt(3.0), math.sqrt(3.0))
    weights.apply(model)
    args = ", ".join(f"{k}={v}" for k, v in TEST_ARGS.items())
    write_case(out, "tnt_test", model=model, weights=weights, spec="specs/tnt.bb",
               bbc_model="tnt_test",
               dims={"B": 2}, inputs={"x": seeded_input((2, 3, 32, 32), seed)},
               output_name="logits", tolerance=1e-4,
               reference=f"timm {timm.__version__} TNT({args}) (non-legacy), random weights "
                         f"(seed {seed}; cls_token/patch_pos/pixel_pos U(-sqrt 3, sqrt 3)), "
                         f"torch {torch.__version__} f32 CPU")


CASES = {"tnt_test": case_tnt_test}
