"""Tests of the `bbc` Python package: agreement with the `bbc` command line and the reference
interpreter, the description of inputs and outputs, input conversion, weights, errors, and
running from several threads with the GIL released."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

import bbc

ROOT = Path(__file__).resolve().parents[2]
CONVNEXT = ROOT / "specs" / "convnext.bb"
DEEP_SETS = ROOT / "specs" / "deep_sets.bb"

# Two inputs sharing a size parameter, two outputs, float arguments.
AFFINE = """bb 0.1;
model affine(k: float = 2.0, shift: float = 0.5) {
    input x: f32[N=4];
    input y: f32[N];
    output s = x * k + y + shift;
    output d = x - y;
}
"""


@pytest.fixture(scope="session")
def cli() -> Path:
    """The `bbc` command line of this checkout (`$BBC_CLI`, else the cargo debug build,
    built if it is missing)."""
    if "BBC_CLI" in os.environ:
        return Path(os.environ["BBC_CLI"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    exe = (target if target.is_absolute() else ROOT / target) / "debug" / "bbc"
    if not exe.exists():
        subprocess.run(["cargo", "build", "--bin", "bbc"], cwd=ROOT, check=True)
    return exe


def run_cli(cli: Path, *args: str) -> None:
    done = subprocess.run([str(cli), *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"bbc {' '.join(args)} failed:\n{done.stderr}"


def read_safetensors(path: Path) -> Dict[str, np.ndarray]:
    """The F32 tensors of a safetensors file: an 8-byte little-endian header length, a JSON
    header of dtypes, shapes and byte ranges, then the data."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    data = raw[8 + size :]
    tensors = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        assert entry["dtype"] == "F32", entry
        start, end = entry["data_offsets"]
        tensors[key] = np.frombuffer(data[start:end], dtype="<f4").reshape(entry["shape"])
    return tensors


def random_inputs(model: bbc.Model, seed: int) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(info.shape, dtype=np.float32) for info in model.inputs]


def convnext(size: int = 32, **kwargs) -> bbc.Model:
    return bbc.compile(CONVNEXT, "convnext_test", dims={"H": size, "W": size}, **kwargs)


@pytest.mark.parametrize(
    "spec, model, dims",
    [(CONVNEXT, "convnext_test", {"H": 48, "W": 40}), (DEEP_SETS, "deep_sets_masked", {"N": 6})],
)
def test_outputs_match_bbc_run(cli: Path, tmp_path: Path, spec: Path, model: str, dims) -> None:
    seed = 3
    m = bbc.compile(spec, model, dims=dims, weights=seed)
    inputs = random_inputs(m, seed=11)
    args = ["run", str(spec), "--model", model, "--seed", str(seed), "--output-dir", str(tmp_path)]
    for name, value in dims.items():
        args += ["--dim", f"{name}={value}"]
    for info, x in zip(m.inputs, inputs):
        np.save(tmp_path / f"in_{info.name}.npy", x)
        args += ["--input", f"{info.name}={tmp_path / f'in_{info.name}.npy'}"]
    run_cli(cli, *args)

    got = m.run({info.name: x for info, x in zip(m.inputs, inputs)})
    assert list(got) == [o.name for o in m.outputs]
    for out in m.outputs:
        want = np.load(tmp_path / f"{out.name}.npy")
        assert got[out.name].shape == want.shape == out.shape
        np.testing.assert_allclose(got[out.name], want, rtol=1e-5, atol=1e-5)


def test_every_target_and_level_agrees_with_the_interpreter() -> None:
    oracle = convnext(target="interp")
    x = random_inputs(oracle, seed=0)[0]
    want = oracle(x)
    for level in (0, 1, 2):
        got = convnext(opt_level=level, threads=2)(x)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_inputs_and_outputs_are_described() -> None:
    m = bbc.compile(DEEP_SETS, "deep_sets_masked", dims={"N": 7})
    assert m.name == "deep_sets_masked" and m.target == "cpu"
    assert m.inputs == [bbc.TensorInfo("x", (2, 7, 3)), bbc.TensorInfo("mask", (2, 7))]
    assert m.outputs == [bbc.TensorInfo("y", (2, 1))]
    name, shape = m.outputs[0]
    assert (name, shape) == ("y", (2, 1))
    assert "deep_sets_masked" in repr(m) and "mask: [2, 7]" in repr(m)


def test_one_output_is_an_array_several_a_tuple_or_a_dict() -> None:
    m = bbc.compile_str(AFFINE, args={"k": 3.0, "shift": 0.25}, dims={"N": 3})
    x = np.array([1.0, -2.0, 0.5], np.float32)
    y = np.array([0.5, 4.0, -1.0], np.float32)
    s, d = m(x, y)
    np.testing.assert_allclose(s, x * 3.0 + y + 0.25, rtol=1e-6)
    np.testing.assert_allclose(d, x - y, rtol=1e-6)
    by_name = m.run({"y": y, "x": x})
    assert list(by_name) == ["s", "d"]
    np.testing.assert_array_equal(by_name["s"], s)
    for mixed in (m(x, y=y), m(y=y, x=x)):
        np.testing.assert_array_equal(mixed[0], s)

    single = convnext()
    out = single(random_inputs(single, seed=1)[0])
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (1, 10)


def test_anything_numpy_can_read_is_an_input() -> None:
    m = bbc.compile_str(AFFINE, dims={"N": 4})
    x = np.arange(4, dtype=np.float32)
    y = np.linspace(-1.0, 1.0, 4, dtype=np.float32)
    want = m(x, y)
    strided = np.repeat(x.astype(np.float64), 2)[::2]  # float64, every other element
    for xs, ys in [
        (x.astype(np.float64), y),
        (x.tolist(), y.tolist()),
        (strided, np.asfortranarray(y)),
        (np.stack([x, x])[1], y[::-1].copy()[::-1]),
    ]:
        for got, expected in zip(m(xs, ys), want):
            np.testing.assert_array_equal(got, expected)

    # A float32 view of memory one byte past an f32 boundary is read through a copy.
    misaligned = np.frombuffer(b"\0" + x.tobytes(), dtype=np.float32, offset=1)
    assert not misaligned.flags.aligned
    np.testing.assert_array_equal(m(misaligned, y)[0], want[0])

    c = convnext()
    image = random_inputs(c, seed=2)[0]
    transposed = np.ascontiguousarray(image.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert not transposed.flags.c_contiguous
    np.testing.assert_array_equal(c(transposed), c(image))


class ArrayProtocol:
    """An object NumPy reads through `__array__`, as it reads a CPU torch tensor."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.data if dtype is None else self.data.astype(dtype)


def test_objects_with_the_array_protocol_are_inputs() -> None:
    m = convnext()
    x = random_inputs(m, seed=4)[0]
    np.testing.assert_array_equal(m(ArrayProtocol(x)), m(x))
    np.testing.assert_array_equal(m(ArrayProtocol(x.astype(np.float64))), m(x))


def test_torch_tensors_are_inputs() -> None:
    torch = pytest.importorskip("torch")
    m = convnext()
    x = random_inputs(m, seed=4)[0]
    np.testing.assert_array_equal(m(torch.from_numpy(x)), m(x))


def test_weights_from_a_seed_a_checkpoint_or_a_dict(cli: Path, tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save = ["--model", "convnext_test", "--seed", "5", "--save", str(path)]
    run_cli(cli, "weights", str(CONVNEXT), *save)
    x = random_inputs(convnext(), seed=6)[0]
    want = convnext(weights=5)(x)
    assert not np.array_equal(want, convnext(weights=0)(x))
    np.testing.assert_array_equal(convnext(weights=path)(x), want)
    np.testing.assert_array_equal(convnext(weights=str(path))(x), want)
    tensors = read_safetensors(path)
    np.testing.assert_array_equal(convnext(weights=tensors)(x), want)

    missing = dict(tensors)
    key = sorted(missing)[0]
    del missing[key]
    with pytest.raises(bbc.BbcError, match=key.replace(".", r"\.")):
        convnext(weights=missing)
    with pytest.raises(bbc.BbcError, match="nothing.safetensors"):
        convnext(weights=tmp_path / "nothing.safetensors")
    with pytest.raises(TypeError, match="weights must be"):
        convnext(weights=1.5)
    with pytest.raises(ValueError, match="seed"):
        convnext(weights=-1)


def test_model_arguments_are_spec_literals() -> None:
    dims = {"N": 6}
    variant = bbc.compile(DEEP_SETS, "deep_sets_masked", dims=dims)
    args = {"pool": "mean", "masked": True}
    spelled_out = bbc.compile(DEEP_SETS, "deep_sets", dims=dims, args=args)
    assert spelled_out.inputs == variant.inputs
    inputs = random_inputs(variant, seed=8)
    np.testing.assert_array_equal(spelled_out(*inputs), variant(*inputs))
    wider = bbc.compile(DEEP_SETS, "deep_sets", args={"hidden": 16, "d_out": 4})
    assert wider.outputs[0].shape == (2, 4)
    with pytest.raises(TypeError, match="model argument"):
        bbc.compile(DEEP_SETS, "deep_sets", args={"hidden": object()})


def test_spec_errors_are_bbc_errors_with_their_location(tmp_path: Path) -> None:
    with pytest.raises(bbc.BbcError, match=r"E01\d\d") as syntax:
        bbc.compile_str("bb 0.1;\nmodel m( {\n", filename="broken.bb")
    assert "broken.bb:2:" in str(syntax.value)
    assert not isinstance(syntax.value, bbc.InputError)

    bad = tmp_path / "shapes.bb"
    bad.write_text("bb 0.1;\nmodel m {\n    input x: f32[2, 3];\n    output y = x + nope;\n}\n")
    with pytest.raises(bbc.BbcError) as shapes:
        bbc.compile(bad)
    assert f"{bad}:4:" in str(shapes.value)

    for kwargs, message in [
        ({"model": "convnext_tset"}, "did you mean `convnext_test`"),
        ({"dims": {"Q": 3}}, "size parameter `Q`"),
        ({"target": "tpu"}, "unknown target `tpu`"),
        ({"opt_level": 3}, "optimisation level 3"),
    ]:
        with pytest.raises(bbc.BbcError, match=message):
            bbc.compile(CONVNEXT, **kwargs)
    with pytest.raises(bbc.BbcError, match="cannot read"):
        bbc.compile(tmp_path / "missing.bb")


def test_inputs_that_do_not_fit_are_input_errors() -> None:
    m = convnext()
    with pytest.raises(bbc.InputError, match=r"expects \[1, 3, 32, 32\]") as shape:
        m(np.zeros((1, 3, 16, 16), np.float32))
    assert isinstance(shape.value, ValueError) and isinstance(shape.value, bbc.BbcError)

    a = bbc.compile_str(AFFINE)
    x = np.zeros(4, np.float32)
    for call, message in [
        (lambda: a(x), "needs input"),
        (lambda: a(x, x, x), "3 were given"),
        (lambda: a(x, y=x, z=x), "no input `z`"),
        (lambda: a(x, x=x), "given twice"),
        (lambda: a.run({"x": x}), "needs input"),
    ]:
        with pytest.raises(bbc.InputError, match=message):
            call()
    with pytest.raises(ValueError):
        a(x, [[1.0, 2.0], [3.0]])  # ragged: NumPy cannot read it


def test_threads_share_one_model() -> None:
    m = convnext(threads=1)
    inputs = [random_inputs(m, seed=s)[0] for s in range(4)]
    want = [m(x) for x in inputs]
    results: Dict[int, List[np.ndarray]] = {}

    def work(i: int) -> None:
        results[i] = [m(inputs[i]) for _ in range(3)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, runs in results.items():
        for got in runs:
            np.testing.assert_array_equal(got, want[i])
    assert len(results) == len(inputs)


def test_the_gil_is_released_while_a_model_runs() -> None:
    """While one thread is inside a long run, this thread keeps executing Python: the longest
    pause between its loop iterations stays far below the run's duration. A run that held
    the GIL would stall this loop for the whole run, on every attempt."""
    m = convnext(size=1024, target="interp")  # one run takes a few hundred milliseconds
    x = random_inputs(m, seed=9)[0]
    for _attempt in range(3):
        span: Dict[str, float] = {}

        def run() -> None:
            span["start"] = time.perf_counter()
            m(x)
            span["end"] = time.perf_counter()

        worker = threading.Thread(target=run)
        last = time.perf_counter()
        longest_pause, iterations = 0.0, 0
        worker.start()
        while worker.is_alive():
            now = time.perf_counter()
            longest_pause = max(longest_pause, now - last)
            last, iterations = now, iterations + 1
        worker.join()
        duration = span["end"] - span["start"]
        assert duration > 0.05, f"the run took only {duration:.3f} s: too short to tell"
        if longest_pause < duration / 2 and iterations > 1000:
            return
    pytest.fail(
        f"this thread paused for {longest_pause:.3f} s during a {duration:.3f} s run "
        f"({iterations} iterations): the GIL was held"
    )
