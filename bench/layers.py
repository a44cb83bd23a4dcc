#!/usr/bin/env python3
"""Per-layer times of bbc beside ONNX Runtime's, on the same model, weights and input.

Where `peers.py` says by how much a model is slower or faster than ONNX Runtime, this says
where: for each layer it takes the fastest of that layer's profiled runs in each runtime
(`bbc bench --profile --json` on the cpu target, ORT's own profiler) and lines them up by the
layer's weight, slowest difference first. On a busy machine the fastest of many runs is the
figure that noise disturbs least; the sum of the per-layer minima is below any one run.

A layer is matched when ORT's node (after its graph optimisations, e.g. a convolution fused
with its ReLU and residual add) reads the weight of the module bbc's step is named after:
bbc names each step after the Graph IR node it computes, the spec's module path, which is the
ONNX initializer's name without `.weight`. What either runtime does outside the matched layers
(ORT's separate activations and layout reorders, bbc's fused loops) is listed apart by kind.

Run after `cargo build --release`, with `bench/requirements.txt` installed; the artefacts
(weights, input, ONNX file) are `peers.py`'s, shared through the same cache::

    python bench/layers.py --model resnet50
    python bench/layers.py --model efficientnet_b0 --runs 200 --top 20
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402  (the shared artefacts, bbc CLI and ORT session)


# Element-wise nodes ORT fuses into the convolution or product before them (its NCHWc
# convolutions take an activation and a residual add), followed back to that layer's weight.
FUSED_INTO_LAYERS = {"Relu", "Clip", "Add", "Sum", "Sigmoid", "HardSigmoid", "LeakyRelu"}
# Nodes that hold a layer's weight.
PRODUCTS = {"Conv", "MatMul", "Gemm"}


@dataclass
class Layer:
    key: str
    bbc_ms: float | None
    ort_ms: float | None


def ort_layer_times(onnx_path: Path, x, threads: int, runs: int, warmup: int) -> dict[str, float]:
    """The fastest run of each ORT node (its `*_kernel_time` profiler events), by node name."""
    prefix = str(Path(tempfile.gettempdir()) / "bbc-layers-ort")
    session = peers.ort_session(onnx_path, threads, enable_profiling=True,
                                profile_file_prefix=prefix)
    feed = {session.get_inputs()[0].name: x}
    for _ in range(warmup):
        session.run(None, feed)
    # The profile covers the warm-up runs too; they only ever raise a minimum.
    for _ in range(runs):
        session.run(None, feed)
    path = Path(session.end_profiling())
    try:
        events = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    fastest: dict[str, float] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") == "Node" and name.endswith("_kernel_time"):
            node = name[: -len("_kernel_time")]
            ms = e["dur"] / 1e3
            fastest[node] = min(fastest.get(node, ms), ms)
    return fastest


def weight_keys(onnx_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """For the exported graph: each node's weight key (its first initializer input without
    `.weight`), by node name and by output tensor name."""
    onnx = peers.require("onnx")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    consumers = collections.defaultdict(list)
    for node in graph.node:
        for i in node.input:
            consumers[i].append(node)

    def bias_after(node) -> str | None:
        # A product whose weight the exporter folded into an anonymous constant (a linear
        # layer's, transposed): the module is named by the bias its output is added to.
        for out in node.output:
            for c in consumers[out]:
                biases = [i for i in c.input if i in initializers and i.endswith(".bias")]
                if c.op_type == "Add" and biases:
                    return biases[0].removesuffix(".bias")
        return None

    def key_of(node, seen: int = 0) -> str | None:
        weights = [i for i in node.input[1:] if i in initializers]
        named = [w for w in weights if w.endswith(".weight")]
        if named:
            return named[0].removesuffix(".weight")
        if node.op_type in PRODUCTS and weights:
            return bias_after(node) or weights[0]
        # An activation or add ORT fused into the layer before it: follow the data input.
        if seen < 8 and node.op_type in FUSED_INTO_LAYERS and node.input[0] in producer:
            return key_of(producer[node.input[0]], seen + 1)
        return None

    by_node = {n.name: k for n in graph.node if (k := key_of(n))}
    by_output = {o: k for n in graph.node if (k := key_of(n)) for o in n.output}
    return by_node, by_output


def ort_key(node: str, by_node: dict[str, str], by_output: dict[str, str]) -> str | None:
    """The weight key of an ORT node: an original node's, or for a node its optimiser made
    (`<output>_nchwc` and the like) that of the original node producing `<output>`."""
    if node in by_node:
        return by_node[node]
    base = node.split("/")[0]
    for candidate in (base, base.rsplit("_", 1)[0]):
        if candidate in by_node:
            return by_node[candidate]
        if candidate in by_output:
            return by_output[candidate]
    return None


def bbc_layer_times(bbc: peers.BbcCli, spec: str, name: str, art, args) -> tuple[dict, dict]:
    """The fastest profiled run of every bbc step, and each step's kind."""
    if bbc.bench_flags is None or "--profile" not in bbc.bench_flags:
        raise peers.BenchError("this bbc has no `bbc bench --profile`")
    argv = bbc.command("bench", bbc.bench_flags, spec, name, art.weights, args)
    argv += ["--runs", str(args.runs), "--warmup", str(args.warmup), "--input", str(art.input),
             "--profile", "100000", "--json"]
    done, _, _ = bbc.call(argv, args.bbc_timeout, sample_memory=False)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    steps = report.get("profile", {}).get("slowest")
    if not steps or steps[0].get("fastest_ms") is None:
        raise peers.BenchError("`bbc bench --profile --json` gave no per-kernel fastest runs")
    return ({s["step"]: s["fastest_ms"] for s in steps}, {s["step"]: s["kind"] for s in steps})


def compare(bbc_ms: dict[str, float], bbc_kind: dict[str, str], ort_ms: dict[str, float],
            by_node: dict[str, str], by_output: dict[str, str], ort_ops: dict[str, str]):
    """Matched layers (ORT nodes with the same key summed) and what is left on each side."""
    ort_by_key: dict[str, float] = collections.defaultdict(float)
    ort_rest: dict[str, float] = collections.defaultdict(float)
    for node, ms in ort_ms.items():
        key = ort_key(node, by_node, by_output)
        if key is not None and key in bbc_ms:
            ort_by_key[key] += ms
        else:
            ort_rest[ort_ops.get(node, "?")] += ms
    layers = [Layer(k, ms, ort_by_key[k]) for k, ms in bbc_ms.items() if k in ort_by_key]
    bbc_rest: dict[str, float] = collections.defaultdict(float)
    for k, ms in bbc_ms.items():
        if k not in ort_by_key:
            bbc_rest[bbc_kind.get(k, "?")] += ms
    layers.sort(key=lambda layer: layer.bbc_ms - layer.ort_ms, reverse=True)
    return layers, dict(bbc_rest), dict(ort_rest)


def ort_op_types(onnx_path: Path, ort_ms: dict[str, float], threads: int) -> dict[str, str]:
    """Each ORT node's op type, from a second, unprofiled look at its optimised graph."""
    with tempfile.TemporaryDirectory() as d:
        optimised = Path(d) / "optimised.onnx"
        peers.ort_session(onnx_path, threads, optimized_model_filepath=str(optimised))
        onnx = peers.require("onnx")
        graph = onnx.load(str(optimised), load_external_data=False).graph
        ops = {n.name: n.op_type for n in graph.node}
    return {node: ops.get(node, "?") for node in ort_ms}


def render(name: str, layers: list[Layer], bbc_rest: dict, ort_rest: dict, top: int) -> str:
    lines = [f"{name}: fastest run of each layer, ms (bbc - ORT, slowest difference first)",
             f"{'layer':36s} {'bbc':>8s} {'ORT':>8s} {'diff':>8s} {'ratio':>6s}"]
    shown = layers if top <= 0 else layers[:top]
    for layer in shown:
        lines.append(f"{layer.key:36s} {layer.bbc_ms:8.3f} {layer.ort_ms:8.3f} "
                     f"{layer.bbc_ms - layer.ort_ms:+8.3f} {layer.bbc_ms / layer.ort_ms:6.2f}")
    if len(shown) < len(layers):
        lines.append(f"... {len(layers) - len(shown)} more layers (--top 0 lists all)")
    bbc_sum = sum(layer.bbc_ms for layer in layers)
    ort_sum = sum(layer.ort_ms for layer in layers)
    lines.append(f"{f'{len(layers)} matched layers':36s} {bbc_sum:8.3f} {ort_sum:8.3f} "
                 f"{bbc_sum - ort_sum:+8.3f} {bbc_sum / ort_sum if ort_sum else float('nan'):6.2f}")

    def rest(what: str, parts: dict) -> str:
        listed = ", ".join(f"{k} {v:.3f}" for k, v in sorted(parts.items(), key=lambda p: -p[1]))
        return f"{what} {sum(parts.values()):.3f} ms ({listed or 'nothing'})"

    lines.append("not matched: " + rest("bbc", bbc_rest))
    lines.append("not matched: " + rest("ORT", ort_rest))
    total_bbc, total_ort = bbc_sum + sum(bbc_rest.values()), ort_sum + sum(ort_rest.values())
    lines.append(f"all layers: bbc {total_bbc:.3f} ms, ORT {total_ort:.3f} ms, "
                 f"{total_bbc / total_ort:.2f}x")
    return "\n".join(lines)


def parse_args(argv: list[str]):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a timm model name bbc's zoo defines")
    ap.add_argument("--threads", type=int, default=2, help="threads for both runtimes")
    ap.add_argument("--runs", type=int, default=100, help="profiled runs in each runtime")
    ap.add_argument("--warmup", type=int, default=5, help="unprofiled runs first")
    ap.add_argument("--top", type=int, default=30, help="layers listed (0: all)")
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--init", choices=["randomise", "timm"], default="randomise",
                    help="weights as peers.py makes them")
    ap.add_argument("--seed", type=int, default=None, help="as peers.py's --seed")
    ap.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    ap.add_argument("-O", dest="opt_level", type=int, choices=[0, 1, 2], default=2,
                    help="bbc optimisation level")
    ap.add_argument("--bbc", type=Path, default=peers.REPO / "target" / "release" / "bbc",
                    help="the bbc binary")
    ap.add_argument("--bbc-timeout", type=float, default=1800.0,
                    help="seconds before a bbc command is killed")
    ap.add_argument("--spec", action="append", default=[], metavar="MODEL=SPEC",
                    help="the spec defining MODEL, if not the zoo's")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(tempfile.gettempdir()) / "bbc-bench-cache",
                    help="peers.py's cache of weights, inputs and ONNX files")
    ap.add_argument("--no-cache", action="store_true", help="rebuild the cached files")
    args = ap.parse_args(argv)
    peers.check_args(ap, args, ("threads", "runs", "size"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, str(peers.REFERENCE_TOOLS))  # make_fixtures.py's shared helpers
    for module in ("numpy", "torch", "timm", "safetensors", "onnx", "onnxscript", "onnxruntime"):
        peers.require(module)
    if args.seed is None:
        args.seed = peers.require("make_fixtures").BASE_SEED
    bbc = peers.BbcCli.probe(args.bbc)
    spec = peers.find_spec(bbc, args.model, args.spec)
    _, x, art = peers.prepare_artefacts(args.model, args, args.cache_dir)
    bbc_ms, bbc_kind = bbc_layer_times(bbc, spec, args.model, art, args)
    ort_ms = ort_layer_times(art.onnx, x, args.threads, args.runs, args.warmup)
    by_node, by_output = weight_keys(art.onnx)
    ops = ort_op_types(art.onnx, ort_ms, args.threads)
    layers, bbc_rest, ort_rest = compare(bbc_ms, bbc_kind, ort_ms, by_node, by_output, ops)
    print(render(args.model, layers, bbc_rest, ort_rest, args.top))
    return 0


if __name__ == "__main__":
    peers.run_cli(main)
