"""The peer benchmark's target check (`peers.targets`), on results made up here: which
targets apply to which model, met or missed and by how much, and what a missed latency
target allows beside the time the model's FLOPs take at the measured FMA peak."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import peers  # noqa: E402


def timing(median_ms: float) -> peers.Timing:
    return peers.Timing.of([median_ms], [[median_ms]])


def result(model: str, bbc: float, ort: float, torch: float, **bench) -> peers.ModelResult:
    res = peers.ModelResult(model, "specs/x.bb")
    res.timing = {"bbc": timing(bbc), "ort": timing(ort), "torch": timing(torch)}
    res.bbc_bench = bench or None
    return res


def by_name(checks: list[peers.Target]) -> dict[str, peers.Target]:
    return {t.name: t for t in checks}


def test_convnext_is_held_to_the_tighter_ort_ratio():
    checks = by_name(peers.targets(result("convnext_atto", 8.5, 10.0, 20.0)))
    assert checks["bbc/ORT"].limit == peers.CONVNEXT_ORT_LIMIT
    assert not checks["bbc/ORT"].met  # 0.85x against 0.8x
    assert checks["bbc/torch"].met  # 0.425x
    checks = by_name(peers.targets(result("resnet18", 8.5, 10.0, 20.0)))
    assert checks["bbc/ORT"].limit == peers.ORT_LIMIT and checks["bbc/ORT"].met


def test_a_miss_says_by_how_much_and_what_the_peak_allows():
    res = result("resnet50", 36.0, 40.0, 60.0, flops=8.2e9, fma_peak_gflops=232.0,
                 compile_ms=150.0, compile_ms_rounds=[99.0, 150.0, 80.0])
    checks = by_name(peers.targets(res))
    torch = checks["bbc/torch"]
    assert not torch.met
    line = torch.line()
    assert "missed by 20%" in line  # 0.6x against 0.5x
    assert "allows 30.0 ms" in line
    assert f"take {8.2e9 / 232.0e9 * 1e3:.1f} ms" in line
    assert checks["bbc/ORT"].line() == "bbc/ORT 0.90x <= 1.00x: met"
    assert checks["compile"].line() == "compile 150.0 ms <= 100.0 ms: missed by 50% (rounds 99, 150, 80)"


def test_compile_only_for_the_named_models_and_memory_only_when_measured():
    res = result("efficientnet_b0", 7.0, 8.0, 20.0, compile_ms=40.0)
    assert "compile" not in by_name(peers.targets(res))
    assert "peak memory" not in by_name(peers.targets(res))
    res.memory = {"bbc": {"peak_arena_bytes": 6 << 20}, "ort": {"peak_growth_bytes": 4 << 20}}
    memory = by_name(peers.targets(res))["peak memory"]
    assert not memory.met and "missed by 50%" in memory.line()


def test_a_model_without_timings_is_reported_as_such():
    res = peers.ModelResult("resnet18", "specs/resnet.bb", refused={"bbc": "bbc run failed"})
    assert peers.targets(res) == []
    text = peers.render_targets([res])
    assert "resnet18: nothing measured" in text
    assert text.startswith(peers.TARGETS_TITLE)


def test_json_carries_targets_only_where_asked(tmp_path):
    import argparse
    import json

    res = result("resnet18", 8.5, 10.0, 20.0)
    args = argparse.Namespace(out=tmp_path / "x.json")
    plain, rated = tmp_path / "plain.json", tmp_path / "rated.json"
    # gpu_peers.py shares write_json: its results get no CPU targets.
    peers.write_json(plain, {}, args, [res])
    peers.write_json(rated, {}, args, [res], peers.targets_json)
    assert "targets" not in json.loads(plain.read_text())["results"][0]
    checks = json.loads(rated.read_text())["results"][0]["targets"]
    assert [(c["name"], c["met"]) for c in checks] == [("bbc/ORT", True), ("bbc/torch", True)]
