#!/usr/bin/env python3
"""Generate the PyTorch reference fixtures that bbc's interpreter is tested against.

Each case builds one reference model in PyTorch (timm for ConvNeXt, small hand-written
modules for Deep Sets and the Spatial Broadcast Decoder), overwrites *every* float
parameter and buffer with seeded random values that make each of them matter (timm's
default init hides bugs: ConvNeXt's layer-scale ``gamma`` starts at 1e-6, LayerNorm
weights at 1, biases at 0), runs the model in float32 on a seeded random input and
writes one folder per case::

    <out>/<case>/weights.safetensors   state_dict with the model's own key names
    <out>/<case>/<input>.npy           one per input (float32)
    <out>/<case>/<output>.npy          one per output (float32)
    <out>/<case>/case.json             spec, bbc model name, dims, names, tolerance

The fixtures are committed; CI does not need torch.  Regenerate them (from the repo
root) with::

    python tools/reference/make_fixtures.py            # all cases
    python tools/reference/make_fixtures.py --only deep_sets_sum
    python tools/reference/make_fixtures.py --out /tmp/fixtures

See tools/reference/README.md for the case list and the case.json format.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

import timm
import timm.models.convnext

DEFAULT_OUT = Path("tests/fixtures/reference")
BASE_SEED = 20240601


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


def set_determinism(seed: int = BASE_SEED) -> None:
    """Fixed seeds, deterministic kernels, one CPU thread (bit-stable reductions)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)


def _generator(seed: int, key: str) -> torch.Generator:
    """A generator seeded from (case seed, tensor name): each tensor's values depend only
    on its own name, not on the order of the state dict."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63)
    return g


def random_value_for(key: str, like: torch.Tensor, seed: int) -> torch.Tensor:
    """Random replacement for one state-dict entry, scaled so activations stay O(1).

    * weights with >= 2 dims (conv / linear): N(0, 1/fan_in) (std 1/sqrt(fan_in))
    * 1-D ``weight`` (norm scales) and ConvNeXt ``gamma`` (layer scale): U(0.5, 1.5)
    * ``bias``, BN ``running_mean``: N(0, 0.1^2)
    * BN ``running_var``: U(0.5, 2)
    """
    g = _generator(seed, key)
    shape, name = like.shape, key.rsplit(".", 1)[-1]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float32)

    def normal(std: float) -> torch.Tensor:
        return std * torch.randn(shape, generator=g, dtype=torch.float32)

    if name == "running_var":
        return uniform(0.5, 2.0)
    if name in ("bias", "running_mean"):
        return normal(0.1)
    if name == "gamma" or (name == "weight" and like.dim() == 1):
        return uniform(0.5, 1.5)
    if like.dim() >= 2:
        fan_in = math.prod(shape[1:])
        return normal(1.0 / math.sqrt(fan_in))
    raise ValueError(f"no randomisation rule for state-dict entry {key!r} {tuple(shape)}")


def randomise_state_dict(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Overwrite every float parameter and buffer of `model` in place with seeded random
    values (see `random_value_for`); returns the new state dict.  Integer buffers such as
    BatchNorm's ``num_batches_tracked`` are left alone (they do not affect eval)."""
    sd = model.state_dict()
    new = {}
    for key, value in sd.items():
        if value.is_floating_point():
            new[key] = random_value_for(key, value, seed).to(value.dtype)
        else:
            new[key] = value.clone()
    model.load_state_dict(new, strict=True)
    return model.state_dict()


def round_through_f16(model: nn.Module) -> None:
    """Round every float tensor of the model through float16 (so an f16-stored weight
    file reproduces the f32 reference output exactly)."""
    sd = {k: (v.half().float() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    model.load_state_dict(sd, strict=True)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_weights(model: nn.Module, path: Path, dtype: torch.dtype = torch.float32,
                 metadata: dict[str, str] | None = None) -> None:
    """Write the model's state dict (its own key names) as contiguous `dtype` tensors.
    Float tensors are cast to `dtype`; integer buffers keep their dtype."""
    tensors = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().clone()
        for k, v in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def save_npy(path: Path, t: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(t.detach().cpu().to(torch.float32).numpy()))


def run_reference(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Forward pass in eval mode without autograd, inputs passed by keyword."""
    model.eval()
    with torch.no_grad():
        return model(**inputs)


def flatten_outputs(name: str, out) -> dict[str, torch.Tensor]:
    """Name a model's result the way bbc names outputs: a tensor keeps `name`, a (nested)
    list or tuple of tensors becomes `name.0`, `name.1`, `name.0.1`, ..."""
    if isinstance(out, torch.Tensor):
        return {name: out}
    flat: dict[str, torch.Tensor] = {}
    for i, item in enumerate(out):
        flat.update(flatten_outputs(f"{name}.{i}", item))
    return flat


def f64_discrepancy(model: nn.Module, inputs: dict[str, torch.Tensor],
                    out32: dict[str, torch.Tensor], output_name: str) -> float:
    """Max |f32 output - f64 output| of the same model/weights: a measure of float
    rounding noise, used to check that the case tolerance is meaningful."""
    import copy
    m64 = copy.deepcopy(model).double()
    out64 = flatten_outputs(output_name, run_reference(m64, {k: v.double() for k, v in inputs.items()}))
    return max(float((out32[k].double() - out64[k]).abs().max()) for k in out32)


def write_case(out_dir: Path, case: str, *, model: nn.Module, spec: str, bbc_model: str,
               dims: dict[str, int], inputs: dict[str, torch.Tensor], output_name: str,
               tolerance: float, reference: str, weight_dtype: torch.dtype = torch.float32) -> None:
    """Run `model` on `inputs`, save everything for one case and print a summary line."""
    for name, t in inputs.items():
        assert t.dtype == torch.float32, f"{case}: input {name} must be float32"
    outs = flatten_outputs(output_name, run_reference(model, inputs))
    for t in outs.values():
        assert t.dtype == torch.float32 and torch.isfinite(t).all(), f"{case}: bad output"
    noise = f64_discrepancy(model, inputs, outs, output_name)
    assert noise < tolerance / 10, (
        f"{case}: f32-vs-f64 discrepancy {noise:.2e} too close to tolerance {tolerance:.0e}")

    folder = out_dir / case
    folder.mkdir(parents=True, exist_ok=True)
    for stale in list(folder.glob("*.npy")):
        stale.unlink()
    save_weights(model, folder / "weights.safetensors", weight_dtype,
                 metadata={"reference": reference})
    for name, t in inputs.items():
        save_npy(folder / f"{name}.npy", t)
    for name, t in outs.items():
        save_npy(folder / f"{name}.npy", t)
    meta = {
        "spec": spec,
        "model": bbc_model,
        "dims": dims,
        "inputs": list(inputs),
        "outputs": list(outs),
        "tolerance": tolerance,
        "reference": reference,
    }
    (folder / "case.json").write_text(json.dumps(meta, indent=2) + "\n")

    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    out = next(iter(outs.values()))
    print(f"{case:32s} {next(iter(outs))}{list(out.shape)} (+{len(outs) - 1}) "
          f"max|out|={max(float(t.abs().max()) for t in outs.values()):.4f} "
          f"std={out.std():.4f} f64-noise={noise:.1e} tol={tolerance:.0e} "
          f"weights={sizes['weights.safetensors'] / 1024:.1f}KiB "
          f"total={sum(sizes.values()) / 1024:.1f}KiB")


def seeded_input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard-normal float32 input from its own generator."""
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32)


# --------------------------------------------------------------------------------------
# Hand-written reference modules
# --------------------------------------------------------------------------------------


class DeepSets(nn.Module):
    """Deep Sets: y = rho(pool_n phi(x_n)).  pool is 'sum', 'mean' or 'masked' (masked
    mean: sum of valid h over the count of valid elements, count clamped to >= 1)."""

    def __init__(self, d_in: int, hidden: int, d_out: int, pool: str):
        super().__init__()
        assert pool in ("sum", "mean", "masked")
        self.pool = pool
        self.phi = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.rho = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.phi(x)  # [B, N, hidden]
        if self.pool == "sum":
            pooled = h.sum(1)
        elif self.pool == "mean":
            pooled = h.mean(1)
        else:
            m = mask.unsqueeze(-1)  # [B, N, 1]
            s = (h * m).sum(1)
            pooled = s / m.sum(1).clamp(min=1.0)
        return self.rho(pooled)  # [B, d_out]


class SpatialBroadcastDecoder(nn.Module):
    """Spatial Broadcast Decoder (Watters et al. 2019): tile z over an (H+2n)x(W+2n)
    grid, append x/y coordinate channels in [-1, 1], then n unpadded 3x3 conv+ReLU
    layers (each shrinks the grid by 2) and a 1x1 conv to out_ch channels."""

    def __init__(self, latent: int, H: int, W: int, hidden: int, n_conv: int, out_ch: int):
        super().__init__()
        self.latent, self.H, self.W, self.n_conv = latent, H, W, n_conv
        layers: list[nn.Module] = []
        for i in range(n_conv):
            layers += [nn.Conv2d(latent + 2 if i == 0 else hidden, hidden, 3, padding=0), nn.ReLU()]
        layers.append(nn.Conv2d(hidden, out_ch, 1))
        self.dec = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        B = z.shape[0]
        Hb, Wb = self.H + 2 * self.n_conv, self.W + 2 * self.n_conv
        tiled = z[:, :, None, None].expand(B, self.latent, Hb, Wb)
        ys = torch.linspace(-1, 1, Hb, dtype=z.dtype)
        xs = torch.linspace(-1, 1, Wb, dtype=z.dtype)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([xx, yy], 0)  # channel 0 = x (varies along W), 1 = y
        inp = torch.cat([tiled, coords.expand(B, 2, Hb, Wb)], 1)
        return self.dec(inp)


# --------------------------------------------------------------------------------------
# Cases: one function per case, each writes its folder under `out`
# --------------------------------------------------------------------------------------


def case_convnext_atto(out: Path) -> None:
    seed = BASE_SEED + 1
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=1000)
    sd = model.state_dict()
    assert len(sd) == 128, len(sd)
    assert count_params(model) == 3_695_520, count_params(model)
    randomise_state_dict(model, seed)
    round_through_f16(model)  # weights are stored as f16; the f32 output matches them exactly
    write_case(out, "convnext_atto", model=model, spec="specs/convnext.bb",
               bbc_model="convnext_atto", dims={"H": 64, "W": 64},
               inputs={"x": seeded_input((1, 3, 64, 64), seed)}, output_name="logits",
               tolerance=1e-4, weight_dtype=torch.float16,
               reference=f"timm {timm.__version__} convnext_atto(num_classes=1000), random "
                         f"weights (seed {seed}) rounded through f16, torch {torch.__version__} f32 CPU")


def _convnext_test(out: Path, case: str, conv_mlp: bool, batch: int, seed: int) -> None:
    model = timm.models.convnext.ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64),
                                          num_classes=10, conv_mlp=conv_mlp)
    randomise_state_dict(model, seed)
    dims = {"H": 32, "W": 32} if batch == 1 else {"B": batch, "H": 32, "W": 32}
    write_case(out, case, model=model, spec="specs/convnext.bb", bbc_model=case, dims=dims,
               inputs={"x": seeded_input((batch, 3, 32, 32), seed)}, output_name="logits",
               tolerance=1e-4,
               reference=f"timm {timm.__version__} ConvNeXt(depths=(1,1,1,1), dims=(8,16,32,64), "
                         f"num_classes=10, conv_mlp={conv_mlp}), random weights (seed {seed}), "
                         f"torch {torch.__version__} f32 CPU")


def case_convnext_test(out: Path) -> None:
    _convnext_test(out, "convnext_test", conv_mlp=True, batch=2, seed=BASE_SEED + 2)


def case_convnext_test_linear(out: Path) -> None:
    _convnext_test(out, "convnext_test_linear", conv_mlp=False, batch=1, seed=BASE_SEED + 3)


def _deep_sets(out: Path, pool: str, seed: int) -> None:
    case = f"deep_sets_{pool}"
    model = DeepSets(d_in=3, hidden=8, d_out=1, pool=pool)
    assert count_params(model) == 113, count_params(model)
    randomise_state_dict(model, seed)
    inputs = {"x": seeded_input((2, 5, 3), seed)}
    if pool == "masked":
        inputs["mask"] = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.float32)
    write_case(out, case, model=model, spec="specs/deep_sets.bb", bbc_model=case,
               dims={"B": 2, "N": 5}, inputs=inputs, output_name="y", tolerance=1e-4,
               reference=f"tools/reference/make_fixtures.py DeepSets(d_in=3, hidden=8, d_out=1, "
                         f"pool={pool}), random weights (seed {seed}), torch {torch.__version__} f32 CPU")


def case_deep_sets_sum(out: Path) -> None:
    _deep_sets(out, "sum", BASE_SEED + 4)


def case_deep_sets_mean(out: Path) -> None:
    _deep_sets(out, "mean", BASE_SEED + 5)


def case_deep_sets_masked(out: Path) -> None:
    _deep_sets(out, "masked", BASE_SEED + 6)


def case_spatial_broadcast_decoder_test(out: Path) -> None:
    seed = BASE_SEED + 7
    model = SpatialBroadcastDecoder(latent=4, H=8, W=8, hidden=8, n_conv=4, out_ch=3)
    assert count_params(model) == 2_219, count_params(model)
    randomise_state_dict(model, seed)
    write_case(out, "spatial_broadcast_decoder_test", model=model,
               spec="specs/spatial_broadcast_decoder.bb", bbc_model="sbd_test", dims={"B": 2},
               inputs={"z": seeded_input((2, 4), seed)}, output_name="x_hat", tolerance=1e-4,
               reference=f"tools/reference/make_fixtures.py SpatialBroadcastDecoder(latent=4, H=8, "
                         f"W=8, hidden=8, n_conv=4, out_ch=3), random weights (seed {seed}), "
                         f"torch {torch.__version__} f32 CPU")


CASES: dict[str, Callable[[Path], None]] = {
    "convnext_atto": case_convnext_atto,
    "convnext_test": case_convnext_test,
    "convnext_test_linear": case_convnext_test_linear,
    "deep_sets_sum": case_deep_sets_sum,
    "deep_sets_mean": case_deep_sets_mean,
    "deep_sets_masked": case_deep_sets_masked,
    "spatial_broadcast_decoder_test": case_spatial_broadcast_decoder_test,
}


def all_cases() -> dict[str, Callable[[Path], None]]:
    """The cases above plus those of every family module in ``tools/reference/cases/``:
    each such module defines ``CASES`` (case name -> function writing that case) and may
    import the helpers of this file (``from make_fixtures import write_case, ...``)."""
    import importlib.util

    cases = dict(CASES)
    folder = Path(__file__).resolve().parent / "cases"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    for path in sorted(folder.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"cases.{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name, fn in module.CASES.items():
            if name in cases:
                raise SystemExit(f"case `{name}` is defined twice ({path.name})")
            cases[name] = fn
    return cases


def main(argv: list[str] | None = None) -> int:
    cases = all_cases()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"output folder (default {DEFAULT_OUT}, relative to the repo root)")
    ap.add_argument("--only", choices=sorted(cases), action="append",
                    help="generate only this case (repeatable)")
    args = ap.parse_args(argv)

    set_determinism()
    for name in args.only or cases:
        cases[name](args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{'total under ' + str(args.out):32s} {total / 1024:.1f} KiB ({total / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
