#!/usr/bin/env python3
"""Benchmark bbc against ONNX Runtime and PyTorch eager on timm backbones.

For each model (batch 1, float32, 224x224 by default, the same thread count for every
runtime) the script:

1. builds the timm model in eval mode with seeded weights (make_fixtures.py's
   randomisation by default, so every parameter matters), saves its state dict as
   safetensors with timm's own keys (the keys bbc's specs expect) and a seeded input .npy;
2. exports ONNX (static shapes) and opens an ONNX Runtime session with every graph
   optimisation, ``intra_op_num_threads=N``, ``inter_op_num_threads=1``, sequential
   execution, timing the session creation;
3. runs PyTorch, ONNX Runtime and ``bbc run`` on the same input and compares each output with
   PyTorch's (max abs difference over max abs output); a runtime that disagrees by more than
   the tolerance gets no timings for that model;
4. times PyTorch (``torch.inference_mode``) and ONNX Runtime in-process and bbc through one
   ``bbc bench --json`` process per round (its ``samples_ms``), the three alternating round
   by round so that a noisy stretch of the machine hits them alike; bbc's compile time is
   the median of its rounds' (each process compiles anew);
5. measures peak activation memory: ONNX Runtime and PyTorch as the peak-RSS growth of one
   first inference in a fresh subprocess, bbc as ``peak_arena_bytes`` from ``bbc bench``;
6. prints one table and optionally writes it as markdown and the raw results as JSON.

Run from anywhere after ``cargo build --release``::

    python bench/peers.py
    python bench/peers.py --models resnet18 convnext_atto --threads 2 --runs 20 --rounds 3
    python bench/peers.py --markdown table.md --json results.json

What bbc offers is probed from its ``--help`` output at start-up (``bbc run --target``,
``--threads``, the ``bbc bench`` command), so the script keeps working as the backends land;
a column bbc cannot fill yet says so instead of showing a number.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REFERENCE_TOOLS = REPO / "tools" / "reference"
DEFAULT_MODELS = ["convnext_atto", "convnext_tiny", "resnet18", "resnet50", "efficientnet_b0"]
# Where the zoo defines each default model (bbc's model names are timm's); other names are
# looked up in every spec under specs/ with `bbc models`.
KNOWN_SPECS = {
    "convnext_atto": "specs/convnext.bb",
    "convnext_tiny": "specs/convnext.bb",
    "resnet18": "specs/resnet.bb",
    "resnet50": "specs/resnet.bb",
    "efficientnet_b0": "specs/efficientnet.bb",
}
RUNTIMES = ("bbc", "ort", "torch")
# Between one runtime's timed calls and the next one's, so the worker threads of the first
# (ORT's pool, PyTorch's OpenMP team) have stopped spinning before the second starts.
SWITCH_PAUSE_S = 0.1


class BenchError(Exception):
    """A problem the user can fix; printed as `error: ...` without a traceback."""


def require(module: str):
    """Imports `module` or explains how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BenchError(
            f"cannot import `{module}` ({e}); install the benchmark's Python dependencies with\n"
            f"  pip install -r {REPO / 'bench' / 'requirements.txt'}") from e


# --------------------------------------------------------------------------------------
# Statistics and memory probes (shared by the parent and the memory subprocess)
# --------------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    """Linear-interpolated percentile, `q` in [0, 100]."""
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def proc_status_kib(field_name: str, pid: int | str = "self") -> int | None:
    """A `VmXXX:` line of /proc/PID/status in KiB; None once the process has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def own_status_kib(field_name: str) -> int:
    kib = proc_status_kib(field_name)
    if kib is None:
        raise BenchError(f"/proc/self/status has no {field_name} (peak memory needs Linux)")
    return kib


def peak_rss_growth(run_once: Callable[[], Any]) -> dict[str, int]:
    """Bytes by which the process's peak RSS grows while `run_once()` runs.

    Writing 5 to /proc/self/clear_refs resets the peak (VmHWM) to the current RSS, so the
    growth counts the pages the call touches beyond what is already resident (weights,
    code): activations, workspaces and allocator growth."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = own_status_kib("VmRSS")
    run_once()
    peak = own_status_kib("VmHWM")
    return {"rss_before_bytes": before * 1024, "peak_growth_bytes": (peak - before) * 1024}


# --------------------------------------------------------------------------------------
# Model artefacts: weights, input, ONNX
# --------------------------------------------------------------------------------------


@dataclass
class Artefacts:
    weights: Path
    input: Path
    onnx: Path


def build_timm_model(name: str, init: str, seed: int):
    """The timm model in eval mode with seeded weights (see `--init`)."""
    timm = require("timm")
    fixtures = require("make_fixtures")
    fixtures.set_determinism(seed)
    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as e:  # timm's "Unknown model (...)"
        raise BenchError(f"timm cannot build `{name}`: {e}") from e
    if init == "randomise":
        fixtures.randomise_state_dict(model, seed)
    return model.eval()


def load_timm_model(name: str, weights: Path):
    """The timm model with the saved weights: what the memory subprocess measures."""
    timm = require("timm")
    load_file = require("safetensors.torch").load_file
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval()


def export_onnx(model, x, path: Path, opset: int) -> str:
    """Static-shape ONNX export; the torch.export-based exporter first, the TorchScript one
    if that fails. Returns which exporter wrote the file."""
    import torch

    common = {"opset_version": opset, "input_names": ["x"], "output_names": ["logits"]}
    try:
        torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False, **common)
        return "dynamo"
    except Exception as e:  # noqa: BLE001  (any exporter failure: fall back, saying why)
        print(f"  note: torch.export-based ONNX export failed ({type(e).__name__}: {e}); "
              f"using the TorchScript exporter", file=sys.stderr)
    try:
        torch.onnx.export(model, (x,), str(path), dynamo=False, **common)
    except Exception as e:
        raise BenchError(f"ONNX export failed: {type(e).__name__}: {e}") from e
    return "torchscript"


def prepare_artefacts(name: str, args, cache: Path):
    """Builds the model and writes (or reuses) its weights, input and ONNX file.

    Returns the model, the input as a numpy array and the artefacts. A folder is reused when
    its `complete` marker exists (written last, so an interrupted export is redone) unless
    --no-cache; the model then loads the cached weights, so every runtime reads the same."""
    import numpy as np
    import timm
    import torch
    fixtures = require("make_fixtures")
    folder = cache / (f"{name}-{args.init}-seed{args.seed}-{args.size}px-opset{args.opset}"
                      f"-timm{timm.__version__}")
    art = Artefacts(folder / "weights.safetensors", folder / "x.npy", folder / "model.onnx")
    complete = folder / "complete"
    model = build_timm_model(name, args.init, args.seed)
    if args.no_cache or not complete.exists():
        folder.mkdir(parents=True, exist_ok=True)
        complete.unlink(missing_ok=True)
        fixtures.save_weights(model, art.weights,
                              metadata={"reference": f"bench/peers.py {name} init={args.init} "
                                                     f"seed={args.seed}"})
        x = fixtures.seeded_input((1, 3, args.size, args.size), args.seed)
        fixtures.save_npy(art.input, x)
        t0 = time.perf_counter()
        exporter = export_onnx(model, x, art.onnx, args.opset)
        print(f"  exported ONNX ({exporter} exporter, opset {args.opset}) in "
              f"{time.perf_counter() - t0:.1f}s")
        complete.touch()
    else:
        print(f"  reusing {folder}")
        model.load_state_dict(require("safetensors.torch").load_file(str(art.weights)),
                              strict=True)
    torch.set_num_threads(args.threads)  # set_determinism pinned it to 1
    torch.use_deterministic_algorithms(False)
    return model, np.load(art.input), art


# --------------------------------------------------------------------------------------
# ONNX Runtime and PyTorch
# --------------------------------------------------------------------------------------


def ort_session(onnx_path: Path, threads: int, **options):
    """An ORT CPU session with every graph optimisation, N intra-op threads, sequential;
    `options` set further `SessionOptions` fields (e.g. `enable_profiling=True`)."""
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only
    for name, value in options.items():
        setattr(so, name, value)
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def ort_runner(session, x_np) -> Callable[[], Any]:
    feed = {session.get_inputs()[0].name: x_np}
    return lambda: session.run(None, feed)[0]


def torch_runner(model, x) -> Callable[[], Any]:
    import torch

    def run():
        with torch.inference_mode():
            return model(x)
    return run


def memory_child(argv: list[str]) -> int:
    """`peers.py --memory-child ort|torch ...`: load one runtime in this fresh process and
    print, as JSON, the peak-RSS growth of its first inference (see `peak_rss_growth`)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("runtime", choices=["ort", "torch"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--input", type=Path, required=True)
    ap.add_argument("--threads", type=int, required=True)
    a = ap.parse_args(argv)
    import numpy as np
    x_np = np.load(a.input)
    if a.runtime == "ort":
        run = ort_runner(ort_session(a.onnx, a.threads), x_np)
    else:
        import torch
        torch.set_num_threads(a.threads)
        run = torch_runner(load_timm_model(a.model, a.weights), torch.from_numpy(x_np))
    print(json.dumps(peak_rss_growth(run)))
    return 0


def measure_memory(runtime: str, name: str, art: Artefacts, threads: int) -> dict | str:
    """Runs `memory_child` in a subprocess; the JSON dict, or why there is none."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", runtime,
           "--model", name, "--onnx", str(art.onnx), "--weights", str(art.weights),
           "--input", str(art.input), "--threads", str(threads)]
    # A fixed glibc mmap threshold makes every large block a fresh mapping that is unmapped
    # when freed: without it, memory freed while loading (ORT's pre-packed weights, PyTorch's
    # state-dict copies) stays resident, gets reused by the inference and hides its peak.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return f"memory probe failed: {proc.stderr.strip().splitlines()[-1:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------
# bbc through its CLI
# --------------------------------------------------------------------------------------


@dataclass
class BbcCli:
    """The bbc binary and the options its `--help` says it has."""

    exe: Path
    run_flags: set[str]
    bench_flags: set[str] | None  # None: no `bbc bench` command

    @staticmethod
    def probe(exe: Path) -> BbcCli:
        if not exe.is_file():
            raise BenchError(f"bbc binary `{exe}` not found; build it with `cargo build --release` "
                             f"in {REPO} (or pass --bbc PATH)")

        def flags(*sub: str) -> set[str] | None:
            p = subprocess.run([str(exe), *sub, "--help"], capture_output=True, text=True,
                               check=False)
            return set(re.findall(r"(?<![\w-])(--[a-z][\w-]*|-O)\b", p.stdout)) \
                if p.returncode == 0 else None

        run_flags = flags("run")
        if run_flags is None:
            raise BenchError(f"`{exe} run --help` failed: is `{exe}` the bbc CLI?")
        return BbcCli(exe, run_flags, flags("bench"))

    @property
    def engine(self) -> str:
        return "cpu" if "--target" in self.run_flags else "interpreter"

    def command(self, sub: str, flags: set[str], spec: str, name: str, weights: Path,
                args, target: str = "cpu", batch: int | None = None) -> list[str]:
        """`bbc SUB` with spec, model, size (and batch, when given), weights and whichever of
        -O/--target/--threads `flags` (what `bbc SUB --help` lists) has."""
        cmd = [str(self.exe), sub, spec, "--model", name, "--weights", str(weights),
               "--dim", f"H={args.size}", "--dim", f"W={args.size}"]
        if batch is not None:
            cmd += ["--dim", f"B={batch}"]
        if "-O" in flags:
            cmd += [f"-O{args.opt_level}"]
        if "--target" in flags and self.engine == "cpu":  # the engine `bbc run` checked
            cmd += ["--target", target]
        if "--threads" in flags and target == "cpu":
            cmd += ["--threads", str(args.threads)]
        return cmd

    def call(self, argv: list[str], timeout: float,
             sample_memory: bool = True) -> tuple[subprocess.CompletedProcess, float, int]:
        """Runs bbc; returns the process, its wall time (s) and its own peak RSS (bytes).

        The peak is bbc's VmHWM, sampled while it runs (it only grows, so the last sample
        misses at most the final poll interval). Not the child's rusage: its `ru_maxrss`
        starts from this Python process's RSS at the fork, torch and all. Without
        `sample_memory` (timed runs) this process just waits: its polling took up to three
        quarters of a core, which on two cores slowed bbc's timed rounds by up to 40%."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            # Popen returns once the child has exec'd bbc, so every sample below is bbc's.
            proc = subprocess.Popen(argv, stdout=out, stderr=err)
            deadline, timed_out, peak_kib = time.monotonic() + timeout, False, 0
            while sample_memory:
                peak_kib = max(peak_kib, proc_status_kib("VmHWM", proc.pid) or 0)
                if proc.poll() is not None:
                    break
                if time.monotonic() > deadline and not timed_out:
                    proc.kill()
                    timed_out = True
                time.sleep(0.005)
            if not sample_memory:
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    timed_out = True
            wall = time.perf_counter() - t0
            out.seek(0)
            err.seek(0)
            done = subprocess.CompletedProcess(argv, proc.returncode,
                                               out.read().decode(errors="replace"),
                                               err.read().decode(errors="replace"))
        if proc.returncode != 0:
            why = f"timed out after {timeout:g}s" if timed_out else \
                f"exited with {proc.returncode}"
            raise BenchError(f"`{' '.join(argv)}` {why}:\n{done.stderr.rstrip()}")
        return done, wall, peak_kib * 1024

    def run(self, spec: str, name: str, art: Artefacts, out: Path, args, target: str = "cpu",
            batch: int | None = None):
        argv = self.command("run", self.run_flags, spec, name, art.weights, args, target, batch)
        argv += ["--input", str(art.input), "--output", str(out)]
        return self.call(argv, args.bbc_timeout)

    def bench(self, spec: str, name: str, art: Artefacts, args, target: str = "cpu",
              batch: int | None = None, runs: int | None = None) -> dict:
        """`bbc bench ... --json` with `runs` timed runs (default: every round's), parsed
        defensively: the last JSON object on stdout."""
        assert self.bench_flags is not None
        argv = self.command("bench", self.bench_flags, spec, name, art.weights, args, target,
                            batch)
        runs = args.runs * args.rounds if runs is None else runs
        for flag, value in (("--runs", runs), ("--warmup", args.warmup),
                            ("--input", art.input)):
            if flag in self.bench_flags:
                argv += [flag, str(value)]
        argv += ["--json"]
        done, _, _ = self.call(argv, args.bbc_timeout, sample_memory=False)
        for line in reversed(done.stdout.strip().splitlines()):
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(parsed, dict):
                return parsed
        try:
            parsed = json.loads(done.stdout)
            if isinstance(parsed, dict):
                return parsed
        except json.JSONDecodeError:
            pass
        raise BenchError(f"`bbc bench --json` printed no JSON object:\n{done.stdout[-2000:]}")

    def models_in(self, spec: Path) -> list[str]:
        p = subprocess.run([str(self.exe), "models", str(spec)], capture_output=True, text=True,
                           check=False)
        return [line.split()[0] for line in p.stdout.splitlines() if line.strip()] \
            if p.returncode == 0 else []


# Zoo families whose timm namesake is a different network: compared, they would fail the
# checkpoint check, not measure anything.
NOT_TIMM = {
    "vgg": "bbc's vgg specs are torchvision's VGG (linear classifier `classifier.0/3/6`); "
           "timm's vgg ends in a convolutional `pre_logits` and `head.fc`, another network",
}


def find_spec(bbc: BbcCli, name: str, override: dict[str, str]) -> str:
    """The spec defining model `name`: --spec, the known table, or a search of specs/."""
    differs = next((why for family, why in NOT_TIMM.items() if name.startswith(family)), None)
    if differs and name not in override:
        raise BenchError(f"`{name}` cannot be compared with timm's: {differs}")
    if name in override:
        spec = override[name]
    elif name in KNOWN_SPECS:
        spec = str(REPO / KNOWN_SPECS[name])
    else:
        found = [s for s in sorted((REPO / "specs").glob("*.bb")) if name in bbc.models_in(s)]
        if not found:
            raise BenchError(f"no spec under {REPO / 'specs'} defines a model `{name}`; "
                             f"pass --spec {name}=PATH")
        spec = str(found[0])
    if name not in bbc.models_in(Path(spec)):
        raise BenchError(f"`{spec}` has no model `{name}` (see `bbc models {spec}`)")
    return spec


# --------------------------------------------------------------------------------------
# One model
# --------------------------------------------------------------------------------------


@dataclass
class Timing:
    median_ms: float
    p90_ms: float
    min_ms: float = math.nan  # on a busy machine, the closest to an idle one's latency
    round_medians_ms: list[float] = field(default_factory=list)

    @staticmethod
    def of(samples_ms: list[float], rounds: list[list[float]]) -> Timing:
        return Timing(percentile(samples_ms, 50), percentile(samples_ms, 90), min(samples_ms),
                      [percentile(r, 50) for r in rounds])


@dataclass
class ModelResult:
    model: str
    spec: str
    rel_err: dict[str, float | None] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # runtime -> why it has no timings
    timing: dict[str, Timing] = field(default_factory=dict)
    ort_session_ms: float | None = None
    bbc_run_wall_s: float | None = None
    bbc_run_peak_rss_bytes: int | None = None
    bbc_bench: dict[str, Any] | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    load_avg_1min: list[float] = field(default_factory=list)  # at start and end: the noise


def number(fields: dict[str, Any], key: str) -> float:
    """`fields[key]` if it is a number, else NaN (bbc's JSON is parsed defensively)."""
    value = fields.get(key)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if is_number else math.nan


def load_avg_1min() -> float:
    """The 1-minute load average: above the core count, other work competed for the CPUs."""
    return os.getloadavg()[0]


def relative_error(out, ref) -> float:
    import numpy as np
    out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        return math.inf
    return float(np.max(np.abs(out - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def time_interleaved(runners: dict[str, Callable[[], Any]], warmup: int, runs: int,
                     rounds: int,
                     round_runners: dict[str, Callable[[int], list[float]]] | None = None,
                     ) -> dict[str, Timing]:
    """`rounds` rounds of `runs` timed calls per runner, runners alternating each round, so
    that a noisy stretch of the machine hits every runtime alike. A round runner times a
    whole round itself (bbc: one `bbc bench` process) and returns its samples in ms."""
    for run in runners.values():
        for _ in range(warmup):
            run()

    def calls(run: Callable[[], Any]) -> Callable[[int], list[float]]:
        def one_round(n: int) -> list[float]:
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                run()
                samples.append((time.perf_counter() - t0) * 1e3)
            return samples
        return one_round

    all_runners = {k: calls(run) for k, run in runners.items()} | (round_runners or {})
    per_round: dict[str, list[list[float]]] = {k: [] for k in all_runners}
    for _ in range(rounds):
        for key, run_round in all_runners.items():
            time.sleep(SWITCH_PAUSE_S)
            per_round[key].append(run_round(runs))
    return {k: Timing.of([s for r in rs for s in r], rs) for k, rs in per_round.items()}


def bench_model(name: str, spec: str, bbc: BbcCli, args, cache: Path) -> ModelResult:
    import numpy as np
    import torch

    res = ModelResult(name, os.path.relpath(spec, REPO), load_avg_1min=[load_avg_1min()])
    print(f"\n== {name} ({res.spec}), load average {res.load_avg_1min[0]:.1f} ==")
    model, x_np, art = prepare_artefacts(name, args, cache)

    runners = {"torch": torch_runner(model, torch.from_numpy(x_np))}
    t0 = time.perf_counter()
    try:
        session = ort_session(art.onnx, args.threads)
    except Exception as e:  # noqa: BLE001  (ORT has its own exception types; go on)
        res.refused["ort"] = "ORT session failed"
        print(f"  ort: cannot create a session: {e}", file=sys.stderr)
    else:
        res.ort_session_ms = (time.perf_counter() - t0) * 1e3
        runners["ort"] = ort_runner(session, x_np)

    # 1. Outputs first: PyTorch is the reference.
    ref = runners["torch"]().numpy()
    outputs: dict[str, Any] = {rt: run() for rt, run in runners.items()}
    try:
        out_path = art.input.parent / f"bbc-{bbc.engine}-O{args.opt_level}.npy"
        _, res.bbc_run_wall_s, res.bbc_run_peak_rss_bytes = bbc.run(spec, name, art, out_path, args)
        outputs["bbc"] = np.load(out_path)
    except BenchError as e:
        res.refused["bbc"] = "bbc run failed"
        print(f"  bbc: {e}", file=sys.stderr)
    for rt in RUNTIMES:
        if rt not in outputs:
            res.rel_err[rt] = None
            continue
        err = relative_error(outputs[rt], ref)
        res.rel_err[rt] = err
        ok = err <= args.tol  # False for NaN
        verdict = "ok" if ok else f"DISAGREES (> {args.tol:g}); no timings reported"
        extra = ""
        if rt == "bbc":
            extra = (f"  [bbc run, {bbc.engine}, -O{args.opt_level}: {res.bbc_run_wall_s:.2f}s "
                     f"wall, peak RSS {res.bbc_run_peak_rss_bytes / 2**20:.0f} MiB]")
        print(f"  {rt:5s} max|out - torch| / max|torch| = {err:.2e}  {verdict}{extra}")
        if not ok:
            res.refused[rt] = f"output disagrees (rel err {err:.1e})"
    if res.ort_session_ms is not None:
        print(f"  ORT session creation {res.ort_session_ms:.0f} ms")

    # 2. Latency: bbc as one `bbc bench` process per round, between the others' rounds.
    timed = {k: v for k, v in runners.items() if k not in res.refused}
    bbc_rounds: list[dict] = []
    round_runners: dict[str, Callable[[int], list[float]]] = {}
    if "bbc" not in res.refused and bbc.bench_flags is None:
        res.refused["bbc"] = "bbc bench: not available"
    elif "bbc" not in res.refused:
        def bbc_round(n: int) -> list[float]:
            report = bbc.bench(spec, name, art, args, runs=n)
            bbc_rounds.append(report)
            samples = report.get("samples_ms")
            if not isinstance(samples, list) or not samples:
                raise BenchError(f"`bbc bench --json` reported no samples: {report}")
            return [float(v) for v in samples]
        round_runners["bbc"] = bbc_round
    try:
        res.timing.update(time_interleaved(timed, args.warmup, args.runs, args.rounds,
                                           round_runners))
    except BenchError as e:
        res.refused["bbc"] = "bbc bench failed"
        print(f"  bbc: {e}", file=sys.stderr)
        res.timing.update(time_interleaved(timed, args.warmup, args.runs, args.rounds))
    if bbc_rounds and "bbc" not in res.refused:
        # The report of the round with the median compile time (each round compiles anew),
        # with every round's compile time beside it.
        compiles = [number(r, "compile_ms") for r in bbc_rounds]
        middle = sorted(range(len(compiles)), key=lambda i: compiles[i])[len(compiles) // 2]
        res.bbc_bench = dict(bbc_rounds[middle], compile_ms_rounds=compiles)
        res.bbc_bench.pop("samples_ms", None)
        print(f"  bbc bench: {json.dumps(res.bbc_bench)}")
    for rt, t in res.timing.items():
        spread = "" if math.isnan(t.min_ms) else f"  min {t.min_ms:8.2f} ms"
        if len(t.round_medians_ms) > 1:
            spread += "  round medians " + ", ".join(f"{m:.1f}" for m in t.round_medians_ms)
        print(f"  {rt:5s} median {t.median_ms:8.2f} ms  p90 {t.p90_ms:8.2f} ms{spread}")

    res.load_avg_1min.append(load_avg_1min())
    print(f"  load average after timing {res.load_avg_1min[1]:.1f}")

    # 3. Peak activation memory.
    if not args.no_memory:
        for rt in ("ort", "torch"):
            if rt not in res.refused:
                res.memory[rt] = measure_memory(rt, name, art, args.threads)
    arena = number(res.bbc_bench or {}, "peak_arena_bytes")
    if not math.isnan(arena):
        res.memory["bbc"] = {"peak_arena_bytes": int(arena)}
    return res


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------


def fmt_ms(res: ModelResult, rt: str) -> str:
    if rt in res.timing:
        t = res.timing[rt]
        return f"{t.median_ms:.1f}" + ("" if math.isnan(t.p90_ms) else f" (p90 {t.p90_ms:.1f})")
    return res.refused.get(rt, "n/a")


def fmt_ratio(res: ModelResult, a: str, b: str) -> str:
    if a in res.timing and b in res.timing:
        return f"{res.timing[a].median_ms / res.timing[b].median_ms:.2f}x"
    return "n/a"


def fmt_mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def fmt_memory(res: ModelResult) -> str:
    parts = []
    for rt, key in (("bbc", "peak_arena_bytes"), ("ort", "peak_growth_bytes"),
                    ("torch", "peak_growth_bytes")):
        m = res.memory.get(rt)
        parts.append(f"{rt} {fmt_mib(m.get(key)) if isinstance(m, dict) else 'n/a'}")
    return ", ".join(parts)


def table_rows(results: list[ModelResult], engine: str) -> tuple[list[str], list[list[str]]]:
    header = ["model", f"bbc ({engine}) ms", "ORT ms", "torch ms", "bbc/ORT", "bbc/torch",
              "compile (bbc)", "session creation (ORT)", "peak memory"]
    rows = []
    for r in results:
        compile_ms = number(r.bbc_bench or {}, "compile_ms")
        rows.append([
            r.model, fmt_ms(r, "bbc"), fmt_ms(r, "ort"), fmt_ms(r, "torch"),
            fmt_ratio(r, "bbc", "ort"), fmt_ratio(r, "bbc", "torch"),
            "n/a" if math.isnan(compile_ms) else f"{compile_ms:.0f} ms",
            f"{r.ort_session_ms:.0f} ms" if r.ort_session_ms is not None else "n/a",
            fmt_memory(r),
        ])
    return header, rows


# The CPU backend's targets (bench/README.md, "What the targets ask of this machine").
ORT_LIMIT = 1.0
CONVNEXT_ORT_LIMIT = 0.8
TORCH_LIMIT = 0.5
COMPILE_LIMIT_MS = 100.0
COMPILE_MODELS = ("convnext_tiny", "resnet50")
PEER_NAMES = {"ort": "ORT", "torch": "torch"}
TARGETS_TITLE = (f"Targets: bbc/ORT <= {ORT_LIMIT:.1f}x (ConvNeXt <= {CONVNEXT_ORT_LIMIT:.1f}x), "
                 f"bbc/torch <= {TORCH_LIMIT:.1f}x (medians), compile <= "
                 f"{COMPILE_LIMIT_MS:.0f} ms for {' and '.join(COMPILE_MODELS)}, "
                 "peak memory <= ORT's")


@dataclass
class Target:
    """One target checked on one model: `value` against `limit` (lower is better)."""
    model: str
    name: str
    value: float
    limit: float
    unit: str  # "x" for ratios, "ms", "MiB"
    note: str = ""

    @property
    def met(self) -> bool:
        return self.value <= self.limit

    def line(self) -> str:
        fmt = (lambda v: f"{v:.2f}x") if self.unit == "x" else (lambda v: f"{v:.1f} {self.unit}")
        verdict = "met" if self.met else f"missed by {100 * (self.value / self.limit - 1):.0f}%"
        note = f" ({self.note})" if self.note else ""
        return f"{self.name} {fmt(self.value)} <= {fmt(self.limit)}: {verdict}{note}"


def latency_note(res: ModelResult, budget_ms: float) -> str:
    """What a missed ratio target allows, beside the time the model's FLOPs (as `bbc stats`
    counts them: direct convolutions, so more than Winograd's) take at the FMA peak `bbc
    bench` measured."""
    bench = res.bbc_bench or {}
    flops, peak = number(bench, "flops"), number(bench, "fma_peak_gflops")
    note = f"allows {budget_ms:.1f} ms"
    if math.isnan(flops) or math.isnan(peak) or peak <= 0:
        return note
    return (f"{note}; the model's {flops / 1e9:.2f} GFLOP, counted direct, take "
            f"{flops / peak / 1e6:.1f} ms at this machine's FMA peak ({peak:.0f} GFLOP/s)")


def targets(res: ModelResult) -> list[Target]:
    """The targets that apply to `res` and could be measured."""
    out = []
    bbc = res.timing.get("bbc")
    for peer, limit in (("ort", CONVNEXT_ORT_LIMIT if res.model.startswith("convnext")
                         else ORT_LIMIT), ("torch", TORCH_LIMIT)):
        other = res.timing.get(peer)
        if bbc is None or other is None:
            continue
        ratio = bbc.median_ms / other.median_ms
        note = "" if ratio <= limit else latency_note(res, limit * other.median_ms)
        out.append(Target(res.model, f"bbc/{PEER_NAMES[peer]}", ratio, limit, "x", note))
    compile_ms = number(res.bbc_bench or {}, "compile_ms")
    if res.model in COMPILE_MODELS and not math.isnan(compile_ms):
        rounds = (res.bbc_bench or {}).get("compile_ms_rounds") or []
        note = "rounds " + ", ".join(f"{v:.0f}" for v in rounds) if len(rounds) > 1 else ""
        out.append(Target(res.model, "compile", compile_ms, COMPILE_LIMIT_MS, "ms", note))
    bbc_mem, ort_mem = res.memory.get("bbc"), res.memory.get("ort")
    if isinstance(bbc_mem, dict) and isinstance(ort_mem, dict):
        arena, ort_peak = bbc_mem.get("peak_arena_bytes"), ort_mem.get("peak_growth_bytes")
        if arena is not None and ort_peak:
            out.append(Target(res.model, "peak memory", arena / 2**20, ort_peak / 2**20, "MiB"))
    return out


def render_targets(results: list[ModelResult], markdown: bool = False) -> str:
    """Each model's targets, met or missed and by how much (ratios by median)."""
    lines = [TARGETS_TITLE + ("" if markdown else ":")]
    width = max((len(r.model) for r in results), default=0)
    for r in results:
        checks = targets(r)
        if not checks:
            lines.append(f"{'- ' if markdown else '  '}{r.model}: nothing measured")
        for i, t in enumerate(checks):
            if markdown:
                lines.append(f"- {t.model}: {t.line()}")
            else:
                lines.append(f"  {t.model if i == 0 else '':{width}}  {t.line()}")
    return "\n".join(lines) + "\n"


def render_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def render_markdown(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows]) + "\n"


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="MODEL",
                    help="timm model names (bbc's zoo uses the same names)")
    ap.add_argument("--threads", type=int, default=2, help="threads for every runtime")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per round")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds of --runs timed calls, runtimes alternating between rounds")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--init", choices=["randomise", "timm"], default="randomise",
                    help="weights: make_fixtures.py's randomisation (every parameter matters) "
                         "or timm's own seeded init")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed for weights and input (None: make_fixtures.BASE_SEED)")
    ap.add_argument("--tol", type=float, default=1e-4,
                    help="max |out - torch| / max |torch| for a runtime's timings to count")
    ap.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    ap.add_argument("-O", dest="opt_level", type=int, choices=[0, 1, 2], default=2,
                    help="bbc optimisation level")
    ap.add_argument("--bbc", type=Path, default=REPO / "target" / "release" / "bbc",
                    help="the bbc binary")
    ap.add_argument("--bbc-timeout", type=float, default=1800.0,
                    help="seconds before a bbc command is killed")
    ap.add_argument("--spec", action="append", default=[], metavar="MODEL=SPEC",
                    help="the spec defining MODEL, if not the zoo's; repeatable")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(tempfile.gettempdir()) / "bbc-bench-cache",
                    help="weights, inputs and ONNX files, reused between runs")
    ap.add_argument("--no-cache", action="store_true", help="rebuild every cached file")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--markdown", type=Path, help="also write the table here as markdown")
    ap.add_argument("--json", type=Path, help="also write every measurement here as JSON")
    args = ap.parse_args(argv)
    check_args(ap, args, ("threads", "runs", "rounds", "size"))
    return args


def check_args(ap: argparse.ArgumentParser, args, positive: tuple[str, ...]) -> None:
    """The checks of the options `peers.py` and `layers.py` share (exits through `ap` on a
    bad one); turns `--spec MODEL=SPEC` into a dict."""
    if args.opset < 17:
        ap.error("--opset must be >= 17")
    for name in positive:
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        ap.error("--warmup must be >= 0")
    bad = [s for s in args.spec if "=" not in s]
    if bad:
        ap.error(f"--spec takes MODEL=SPEC, got {bad[0]!r}")
    args.spec = dict(s.split("=", 1) for s in args.spec)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sys.path.insert(0, str(REFERENCE_TOOLS))  # make_fixtures.py's shared helpers
    if argv[:1] == ["--memory-child"]:
        return memory_child(argv[1:])
    args = parse_args(argv)
    for module in ("numpy", "torch", "timm", "safetensors", "onnx", "onnxscript", "onnxruntime"):
        require(module)
    import onnxruntime
    import timm
    import torch
    fixtures = require("make_fixtures")
    if args.seed is None:
        args.seed = fixtures.BASE_SEED
    # As ORT's inter_op_num_threads=1; raises if earlier parallel work already fixed it.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)

    unknown = [name for name in args.models if not timm.is_model(name)]
    if unknown:
        raise BenchError(f"timm has no model {', '.join(map(repr, unknown))}")
    bbc = BbcCli.probe(args.bbc)
    specs = {name: find_spec(bbc, name, args.spec) for name in args.models}
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), "unknown CPU")
    print(f"{cpu}, {os.cpu_count()} CPUs; threads={args.threads} runs={args.runs}x"
          f"{args.rounds} warmup={args.warmup} size={args.size} init={args.init} "
          f"seed={args.seed}")
    print(f"torch {torch.__version__}, timm {timm.__version__}, onnxruntime "
          f"{onnxruntime.__version__}; bbc engine: {bbc.engine}, -O{args.opt_level}, "
          f"threads {'--threads' if '--threads' in bbc.run_flags else 'not settable'}, "
          f"bbc bench: {'available' if bbc.bench_flags is not None else 'not available'}")

    results = []
    for name in args.models:
        try:
            results.append(bench_model(name, specs[name], bbc, args, args.cache_dir))
        except BenchError as e:  # this model cannot be benchmarked; the others still can
            print(f"  error: {e}", file=sys.stderr)
            results.append(ModelResult(name, os.path.relpath(specs[name], REPO),
                                       refused=dict.fromkeys(RUNTIMES, "failed (see log)")))

    header, rows = table_rows(results, bbc.engine)
    print("\n" + render_text(header, rows))
    print("\n" + render_targets(results), end="")
    if args.markdown:
        args.markdown.write_text(render_markdown(header, rows) + "\n"
                                 + render_targets(results, markdown=True))
    if args.json:
        meta = {"cpu": cpu, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
                "torch": torch.__version__, "timm": timm.__version__,
                "onnxruntime": onnxruntime.__version__, "bbc_engine": bbc.engine}
        write_json(args.json, meta, args, results, targets_json)
    return 0


def write_json(path: Path, meta: dict[str, Any], args, results: list,
               extra: Callable[[Any], dict[str, Any]] | None = None) -> None:
    """Writes `meta`, the settings in `args` and every result (dataclasses) as JSON, each
    result with the fields `extra(result)` adds."""
    meta["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    rows = [asdict(r) | (extra(r) if extra else {}) for r in results]
    path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2, default=str) + "\n")


def targets_json(res: ModelResult) -> dict[str, Any]:
    """A result's targets for the JSON output."""
    return {"targets": [asdict(t) | {"met": t.met} for t in targets(res)]}


def run_cli(main: Callable[[], int]) -> None:
    """Exits with `main()`'s status, or 1 after printing a [`BenchError`] without a traceback."""
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
