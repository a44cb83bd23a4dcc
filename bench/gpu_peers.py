#!/usr/bin/env python3
"""Benchmark bbc's GPU paths against PyTorch eager CUDA on timm backbones.

For each model and batch size (float32, 224x224 by default) the script:

1. builds the timm model with seeded weights (as bench/peers.py does), saves its state dict
   as safetensors with timm's keys and a seeded input .npy of that batch;
2. runs PyTorch eager on the GPU (its defaults: cuDNN convolutions may use TF32, matrix
   products do not) as the reference output, and ``bbc run --target T`` for each bbc target
   (``cuda``: CUDA C through NVRTC; ``gpu``: WGSL through wgpu on Vulkan), comparing each
   output with PyTorch's (max abs difference over max abs output); a target that disagrees by
   more than the tolerance gets no timings;
3. times PyTorch two ways: host to host (input copied to the device, output copied back, as
   ``bbc run`` does) and device resident (input already there, output left there), each run
   ended by a synchronisation; and bbc through ``bbc bench --target T --json`` (host to host);
4. with --profile N, prints bbc's N slowest kernels per target at each batch;
5. prints one table and optionally writes it as markdown and the raw results as JSON.

Needs an NVIDIA GPU with PyTorch (CUDA), timm and safetensors. Run after
``cargo build --release``::

    python bench/gpu_peers.py
    python bench/gpu_peers.py --models resnet50 --batches 1 --targets cuda --profile 15
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peers
from peers import (REPO, Artefacts, BbcCli, BenchError, Timing, find_spec, number,
                   relative_error, render_markdown, render_text, require, run_cli, write_json)

DEFAULT_MODELS = ["convnext_tiny", "resnet50"]
TARGETS = ("cuda", "gpu")


@dataclass
class CaseResult:
    model: str
    batch: int
    rel_err: dict[str, float] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # bbc target -> why no timings
    timing: dict[str, Timing] = field(default_factory=dict)  # torch, torch_resident, targets
    bench: dict[str, dict[str, Any]] = field(default_factory=dict)
    profile: dict[str, str] = field(default_factory=dict)


def time_torch(run, warmup: int, runs: int) -> Timing:
    """Wall time of `run` (which ends with a synchronisation) over `runs` calls."""
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t0) * 1e3)
    return Timing.of(samples, [samples])


def bench_case(name: str, spec: str, model, batch: int, weights: Path, bbc: BbcCli, args,
               folder: Path) -> CaseResult:
    import numpy as np
    import torch
    fixtures = require("make_fixtures")

    res = CaseResult(name, batch)
    print(f"\n== {name}, batch {batch} ==")
    x = fixtures.seeded_input((batch, 3, args.size, args.size), args.seed)
    art = Artefacts(weights, folder / f"x{batch}.npy", folder / "unused.onnx")
    fixtures.save_npy(art.input, x)
    x_dev = x.cuda()

    def host_to_host():
        with torch.inference_mode():
            return model(x.cuda()).cpu()

    def resident():
        with torch.inference_mode():
            out = model(x_dev)
        torch.cuda.synchronize()
        return out

    ref = host_to_host().numpy()
    res.timing["torch"] = time_torch(host_to_host, args.warmup, args.runs)
    res.timing["torch_resident"] = time_torch(resident, args.warmup, args.runs)

    for target in args.targets:
        out_path = folder / f"bbc-{target}-b{batch}.npy"
        try:
            bbc.run(spec, name, art, out_path, args, target, batch)
        except BenchError as e:
            res.refused[target] = "bbc run failed"
            print(f"  bbc {target}: {e}", file=sys.stderr)
            continue
        err = relative_error(np.load(out_path), ref)
        res.rel_err[target] = err
        ok = err <= args.tol
        print(f"  bbc {target}: max|out - torch| / max|torch| = {err:.2e}  "
              f"{'ok' if ok else f'DISAGREES (> {args.tol:g}); no timings reported'}")
        if not ok:
            res.refused[target] = f"output disagrees (rel err {err:.1e})"
            continue
        try:
            res.bench[target] = bbc.bench(spec, name, art, args, target, batch)
        except BenchError as e:
            res.refused[target] = "bbc bench failed"
            print(f"  bbc {target}: {e}", file=sys.stderr)
            continue
        fields = res.bench[target]
        res.timing[target] = Timing(*(number(fields, k) for k in ("median_ms", "p90_ms",
                                                                   "min_ms")))
        if args.profile:
            argv = bbc.command("bench", bbc.bench_flags, spec, name, art.weights, args, target,
                               batch)
            argv += ["--input", str(art.input), "--runs", str(args.runs),
                     "--profile", str(args.profile)]
            done, _, _ = bbc.call(argv, args.bbc_timeout)
            res.profile[target] = done.stdout
            print(done.stdout.rstrip())
    for key, t in res.timing.items():
        print(f"  {key:15s} median {t.median_ms:8.3f} ms  p90 {t.p90_ms:8.3f} ms  "
              f"min {t.min_ms:8.3f} ms")
    return res


def fmt_ms(res: CaseResult, key: str) -> str:
    if key in res.timing:
        return f"{res.timing[key].median_ms:.2f}"
    return res.refused.get(key, "n/a")


def fmt_ratio(res: CaseResult, a: str, b: str) -> str:
    if a in res.timing and b in res.timing:
        return f"{res.timing[a].median_ms / res.timing[b].median_ms:.2f}x"
    return "n/a"


def table_rows(results: list[CaseResult], targets: list[str]):
    header = ["model", "batch", "torch ms", "torch resident ms"]
    for t in targets:
        header += [f"bbc {t} ms", f"bbc {t}/torch", f"compile ({t})"]
    rows = []
    for r in results:
        row = [r.model, str(r.batch), fmt_ms(r, "torch"), fmt_ms(r, "torch_resident")]
        for t in targets:
            compile_ms = number(r.bench.get(t, {}), "compile_ms")
            row += [fmt_ms(r, t), fmt_ratio(r, t, "torch"),
                    "n/a" if math.isnan(compile_ms) else f"{compile_ms / 1e3:.2f} s"]
        rows.append(row)
    return header, rows


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="MODEL")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32], metavar="B")
    ap.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    ap.add_argument("--runs", type=int, default=50, help="timed runs")
    ap.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--init", choices=["randomise", "timm"], default="randomise",
                    help="weights: make_fixtures.py's randomisation, or timm's own init")
    ap.add_argument("--seed", type=int, default=None, help="default: make_fixtures' seed")
    ap.add_argument("--tol", type=float, default=1e-2,
                    help="largest relative output difference from PyTorch (TF32 on both)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also print bbc's N slowest kernels per target and batch")
    ap.add_argument("-O", dest="opt_level", type=int, choices=[0, 1, 2], default=2)
    ap.add_argument("--bbc", type=Path, default=REPO / "target" / "release" / "bbc")
    ap.add_argument("--bbc-timeout", type=float, default=600.0)
    ap.add_argument("--spec", action="append", default=[], metavar="MODEL=SPEC")
    ap.add_argument("--markdown", type=Path, help="also write the table here as markdown")
    ap.add_argument("--json", type=Path, help="also write every measurement here as JSON")
    args = ap.parse_args(argv)
    if min(args.batches) < 1 or args.runs < 1 or args.size < 1 or args.warmup < 0:
        ap.error("--batches, --runs and --size must be >= 1, --warmup >= 0")
    args.spec = dict(s.split("=", 1) for s in args.spec if "=" in s)
    args.threads, args.rounds = 1, 1  # peers.BbcCli reads these; threads is CPU-only
    return args


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(peers.REFERENCE_TOOLS))
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for module in ("numpy", "torch", "timm", "safetensors"):
        require(module)
    import timm
    import torch
    if not torch.cuda.is_available():
        raise BenchError("PyTorch sees no CUDA device")
    fixtures = require("make_fixtures")
    if args.seed is None:
        args.seed = fixtures.BASE_SEED
    bbc = BbcCli.probe(args.bbc)
    if bbc.bench_flags is None:
        raise BenchError(f"`{args.bbc}` has no `bench` command")
    gpu = torch.cuda.get_device_name()
    print(f"{gpu}; torch {torch.__version__}, timm {timm.__version__}; cuDNN TF32 "
          f"{torch.backends.cudnn.allow_tf32}, matmul TF32 "
          f"{torch.backends.cuda.matmul.allow_tf32}; runs={args.runs} warmup={args.warmup}")

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            spec = find_spec(bbc, name, args.spec)
            model = peers.build_timm_model(name, args.init, args.seed)
            torch.use_deterministic_algorithms(False)
            folder = Path(tmp) / name
            folder.mkdir()
            weights = folder / "weights.safetensors"
            fixtures.save_weights(model, weights)
            model = model.cuda()
            for batch in args.batches:
                results.append(bench_case(name, spec, model, batch, weights, bbc, args, folder))
            del model
            torch.cuda.empty_cache()

    header, rows = table_rows(results, args.targets)
    print("\n" + render_text(header, rows))
    if args.markdown:
        args.markdown.write_text(render_markdown(header, rows))
    if args.json:
        meta = {"gpu": gpu, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                "timm": timm.__version__}
        write_json(args.json, meta, args, results)
    return 0


if __name__ == "__main__":
    run_cli(main)
