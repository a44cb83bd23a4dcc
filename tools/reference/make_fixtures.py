#!/usr/bin/env python3
"""Generate the PyTorch reference fixtures that bbc's interpreter is tested against.

Each case builds one reference model in PyTorch (timm for ConvNeXt, small hand-written
modules for Deep Sets and the Spatial Broadcast Decoder), overwrites *every* float
parameter and buffer with seeded random values that make each of them matter (timm's
default init hides bugs: ConvNeXt's layer-scale ``gamma`` starts at 1e-6, LayerNorm
weights at 1, biases at 0), runs the model in float32 on a seeded random input and
writes one folder per case::

    <out>/<case>/weights.json          the state dict as a recipe (`WeightRecipe`): per key
                                       its shape and the range its values are generated
                                       from, a few bytes instead of the tensor
    <out>/<case>/<input>.npy           one per input (float32)
    <out>/<case>/<output>.npy          one per output (float32)
    <out>/<case>/case.json             spec, bbc model name, dims, names, tolerance

The fixtures are committed; CI does not need torch (the tests regenerate the weights from
``weights.json`` bit for bit, see `uniform_values`).  Regenerate them (from the repo
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
import sys
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


def output_scale(t: torch.Tensor) -> float:
    """max(1, max |t|): what the Rust tests multiply a case's tolerance by."""
    return max(1.0, float(t.abs().max()))


def f64_discrepancy(model: nn.Module, inputs: dict[str, torch.Tensor],
                    out32: dict[str, torch.Tensor], output_name: str) -> tuple[float, float]:
    """Float rounding noise of the reference: max |f32 output - f64 output| of the same
    model and weights, absolute and relative to the output's scale (`output_scale`, the
    way the tests apply the tolerance), each maximised over the outputs."""
    import copy
    m64 = copy.deepcopy(model).double()
    out64 = flatten_outputs(output_name, run_reference(m64, {k: v.double() for k, v in inputs.items()}))
    errors = {k: float((out32[k].double() - out64[k]).abs().max()) for k in out32}
    return max(errors.values()), max(errors[k] / output_scale(out32[k]) for k in out32)


def write_case(out_dir: Path, case: str, *, model: nn.Module, spec: str, bbc_model: str,
               dims: dict[str, int], inputs: dict[str, torch.Tensor], output_name: str,
               tolerance: float, reference: str, weights: WeightRecipe) -> None:
    """Run `model` on `inputs`, save everything for one case and print a summary line.
    `weights` is the recipe of the model's state dict, checked to reproduce it bit for bit
    (so a case that changes a weight after drawing the recipe must record it there)."""
    assert weights.matches(model), f"{case}: the model's state dict is not its weight recipe"
    for name, t in inputs.items():
        assert t.dtype == torch.float32, f"{case}: input {name} must be float32"
    outs = flatten_outputs(output_name, run_reference(model, inputs))
    for t in outs.values():
        assert t.dtype == torch.float32 and torch.isfinite(t).all(), f"{case}: bad output"
    noise, relative_noise = f64_discrepancy(model, inputs, outs, output_name)
    assert relative_noise < tolerance / 10, (
        f"{case}: f32-vs-f64 discrepancy {relative_noise:.2e} (relative to the output scale) "
        f"too close to tolerance {tolerance:.0e}")

    folder = out_dir / case
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("*.npy"), folder / "weights.safetensors"]:
        stale.unlink(missing_ok=True)
    (folder / "weights.json").write_text(weights.to_json())
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
          f"std={out.std():.4f} f64-noise={noise:.1e} (relative {relative_noise:.1e}) "
          f"tol={tolerance:.0e} "
          f"weights.json={sizes['weights.json'] / 1024:.1f}KiB "
          f"total={sum(sizes.values()) / 1024:.1f}KiB")


def seeded_input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard-normal float32 input from its own generator."""
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32)


# --------------------------------------------------------------------------------------
# Weight recipes: every fixture's weights, regenerated from a few numbers per tensor
# --------------------------------------------------------------------------------------

GENERATOR = "splitmix-uniform-v1"
_U64 = 2**64 - 1
_CHUNK = 1 << 20  # elements generated at a time, so a 25M-parameter model needs no GiB arrays
_SQRT3 = math.sqrt(3.0)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def fnv1a64(key: str) -> int:
    """64-bit FNV-1a of the key's UTF-8 bytes."""
    h = 0xCBF29CE484222325
    for byte in key.encode():
        h = ((h ^ byte) * 0x100000001B3) & _U64
    return h


def uniform_values(seed: int, key: str, count: int, lo: float, hi: float) -> np.ndarray:
    """The ``splitmix-uniform-v1`` values of tensor `key`: element ``i`` (row-major) is::

        h = splitmix64(seed ^ fnv1a64(key) ^ splitmix64(i))     (uint64, wrapping)
        u = (h >> 40) / 2**24                                    (exact in f32 and f64)
        value = f32(lo + (hi - lo) * u)                          (f64 arithmetic, one rounding)

    ``splitmix64(x)``: ``z = x + 0x9E3779B97F4A7C15; z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9;
    z = (z ^ z >> 27) * 0x94D049BB133111EB; return z ^ z >> 31``.  ``fnv1a64``: offset
    basis 0xCBF29CE484222325, prime 0x100000001B3, over the key's UTF-8 bytes.  Only
    integer operations, one multiply, one add and two roundings, so any language computes
    the same bits (``tests/common/recipe.rs`` is the Rust side)."""
    base = np.uint64((seed ^ fnv1a64(key)) & _U64)
    out = np.empty(count, dtype=np.float32)
    for start in range(0, count, _CHUNK):
        stop = min(count, start + _CHUNK)
        h = splitmix64(base ^ splitmix64(np.arange(start, stop, dtype=np.uint64)))
        u = (h >> np.uint64(40)).astype(np.float64) / float(2**24)
        out[start:stop] = (lo + (hi - lo) * u).astype(np.float32)
    return out


def values_check(values: np.ndarray) -> str:
    """A digest of float32 values, written next to each recipe entry so that a reader can
    prove it generated the very same bits: the wrapping uint64 sum over ``i`` of
    ``splitmix64(i << 32 | f32_bits(value_i))``, as 16 hex digits."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint32)
    total = np.uint64(0)
    with np.errstate(over="ignore"):
        for start in range(0, flat.size, _CHUNK):
            i = np.arange(start, min(flat.size, start + _CHUNK), dtype=np.uint64)
            mixed = splitmix64((i << np.uint64(32)) | flat[start:start + i.size].astype(np.uint64))
            total = total + mixed.sum(dtype=np.uint64)
    return f"{int(total):016x}"


def _short(x: float) -> float:
    """`x` to 9 significant digits: its JSON text then has a mantissa below 2**53 and a
    small exponent, which every JSON reader (serde_json's fast path included) parses to
    the same double."""
    return float(f"{x:.9g}")


def uniform_range_for(key: str, like: torch.Tensor) -> tuple[float, float]:
    """The range of one float state-dict entry, chosen so activations stay O(1) and no
    parameter is a no-op:

    * weights with >= 2 dims (conv / linear): U(-sqrt(3/fan_in), sqrt(3/fan_in))
      (std 1/sqrt(fan_in))
    * 1-D ``weight`` (norm scales) and ConvNeXt ``gamma`` (layer scale): U(0.5, 1.5)
    * ``bias``, BN ``running_mean``: U(-0.1*sqrt(3), 0.1*sqrt(3)) (std 0.1)
    * BN ``running_var``: U(0.5, 2)

    (A normal draw with std s becomes the uniform one with the same variance: the
    generator uses no transcendental functions, so no libm can change a bit.)"""
    name = key.rsplit(".", 1)[-1]
    if name == "running_var":
        return 0.5, 2.0
    if name in ("bias", "running_mean"):
        return -0.1 * _SQRT3, 0.1 * _SQRT3
    if name == "gamma" or (name == "weight" and like.dim() == 1):
        return 0.5, 1.5
    if like.dim() >= 2:
        half = _SQRT3 / math.sqrt(math.prod(like.shape[1:]))
        return -half, half
    raise ValueError(f"no randomisation rule for state-dict entry {key!r} {tuple(like.shape)}")


# Integer buffers a recipe may hold as constants, by their safetensors dtype names.
_INT_DTYPES = {torch.int64: "I64"}


class WeightRecipe:
    """A model's complete state dict as a recipe: per key its shape and either a uniform
    range (``lo``, ``hi``, values from `uniform_values` with the recipe's seed), a short
    explicit list of float ``values``, or an integer constant ``value`` with its
    ``dtype`` (BatchNorm's ``num_batches_tracked``).  Saved as ``weights.json``::

        {"generator": "splitmix-uniform-v1", "seed": N,
         "tensors": {key: {"shape": [...], "lo": a, "hi": b, "check": "<hex>"}, ...}}

    where ``check`` is `values_check` of the generated float32 tensor."""

    def __init__(self, seed: int):
        self.seed = seed
        self.entries: dict[str, dict] = {}
        self._cache: dict[str, torch.Tensor] = {}

    @classmethod
    def for_model(cls, model: nn.Module, seed: int,
                  rule: Callable[[str, torch.Tensor], tuple[float, float]] = uniform_range_for,
                  ) -> "WeightRecipe":
        """Every float entry of `model`'s state dict gets the range `rule` gives it (by
        default `uniform_range_for`); integer buffers keep their (uniform) current value."""
        recipe = cls(seed)
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                recipe.uniform(key, *rule(key, value), shape=value.shape)
            else:
                recipe.constant(key, value)
        return recipe

    def uniform(self, key: str, lo: float, hi: float, shape=None) -> None:
        """Draw `key` from U(lo, hi) (replacing its rule; `shape` defaults to the current)."""
        shape = list(shape if shape is not None else self.entries[key]["shape"])
        self._set(key, {"shape": shape, "lo": _short(lo), "hi": _short(hi)})

    def values(self, key: str, values: list[float]) -> None:
        """Set `key` (a tensor of len(values) elements) to these exact values."""
        shape = self.entries[key]["shape"]
        assert math.prod(shape) == len(values), f"{key}: {len(values)} values for {shape}"
        self._set(key, {"shape": shape, "values": [float(v) for v in values]})

    def constant(self, key: str, value: torch.Tensor) -> None:
        """An integer buffer holding one value everywhere."""
        flat = value.flatten()
        uniform = flat.numel() == 0 or bool((flat == flat[0]).all())
        if value.dtype not in _INT_DTYPES or not uniform:
            raise ValueError(f"{key}: only uniform {list(_INT_DTYPES)} buffers can be constants")
        first = int(flat[0]) if flat.numel() > 0 else 0
        dtype = _INT_DTYPES[value.dtype]
        self._set(key, {"shape": list(value.shape), "dtype": dtype, "value": first})

    def _set(self, key: str, entry: dict) -> None:
        self.entries[key] = entry
        self._cache.pop(key, None)

    def tensor(self, key: str) -> torch.Tensor:
        """The tensor `key` generates (cached)."""
        if key not in self._cache:
            e = self.entries[key]
            shape, count = e["shape"], math.prod(e["shape"])
            if "lo" in e:
                data = torch.from_numpy(uniform_values(self.seed, key, count, e["lo"], e["hi"]))
            elif "values" in e:
                data = torch.tensor(e["values"], dtype=torch.float32)
            else:
                dtype = next(t for t, name in _INT_DTYPES.items() if name == e["dtype"])
                data = torch.full((count,), e["value"], dtype=dtype)
            self._cache[key] = data.reshape(shape)
        return self._cache[key]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {key: self.tensor(key) for key in self.entries}

    def apply(self, model: nn.Module) -> None:
        """Load the generated tensors into `model` (every key, strictly)."""
        model.load_state_dict(self.state_dict(), strict=True)

    def matches(self, model: nn.Module) -> bool:
        """Whether `model`'s state dict is exactly (keys, dtypes and bits) the recipe's."""
        sd = model.state_dict()
        return list(sd) == list(self.entries) and all(
            sd[k].dtype == self.tensor(k).dtype and torch.equal(sd[k], self.tensor(k)) for k in sd)

    def to_json(self) -> str:
        """``weights.json``'s text: one line per tensor, in state-dict order."""
        lines = []
        for key, entry in self.entries.items():
            if "dtype" not in entry:
                entry = {**entry, "check": values_check(self.tensor(key).numpy())}
            lines.append(f"    {json.dumps(key)}: {json.dumps(entry)}")
        body = ",\n".join(lines)
        tensors = "{\n" + body + "\n  }" if lines else "{}"
        return (f'{{\n  "generator": "{GENERATOR}",\n  "seed": {self.seed},\n'
                f'  "tensors": {tensors}\n}}\n')


def randomise_state_dict(model: nn.Module, seed: int) -> WeightRecipe:
    """Overwrite every parameter and buffer of `model` in place with its seeded recipe
    (`WeightRecipe.for_model`) and return the recipe."""
    recipe = WeightRecipe.for_model(model, seed)
    recipe.apply(model)
    return recipe


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
    weights = randomise_state_dict(model, seed)
    write_case(out, "convnext_atto", model=model, weights=weights, spec="specs/convnext.bb",
               bbc_model="convnext_atto", dims={"H": 64, "W": 64},
               inputs={"x": seeded_input((1, 3, 64, 64), seed)}, output_name="logits",
               tolerance=1e-4,
               reference=f"timm {timm.__version__} convnext_atto(num_classes=1000), random "
                         f"weights (seed {seed}), torch {torch.__version__} f32 CPU")


def _convnext_test(out: Path, case: str, conv_mlp: bool, batch: int, seed: int) -> None:
    model = timm.models.convnext.ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64),
                                          num_classes=10, conv_mlp=conv_mlp)
    weights = randomise_state_dict(model, seed)
    dims = {"H": 32, "W": 32} if batch == 1 else {"B": batch, "H": 32, "W": 32}
    write_case(out, case, model=model, weights=weights,
               spec="specs/convnext.bb", bbc_model=case, dims=dims,
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
    weights = randomise_state_dict(model, seed)
    inputs = {"x": seeded_input((2, 5, 3), seed)}
    if pool == "masked":
        inputs["mask"] = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.float32)
    write_case(out, case, model=model, weights=weights, spec="specs/deep_sets.bb", bbc_model=case,
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
    weights = randomise_state_dict(model, seed)
    write_case(out, "spatial_broadcast_decoder_test", model=model, weights=weights,
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
