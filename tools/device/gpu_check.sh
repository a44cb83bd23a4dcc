#!/usr/bin/env bash
# GPU check for an NVIDIA machine with a driver but maybe no Rust toolchain: run from the
# repository root with a prebuilt x86-64 release `bbc` (and, optionally, the prebuilt
# gpu_backend test binary). Prints a compact report; takes about 4-6 minutes.
#
#   1. the CUDA test: every spec's test model through the CUDA executor vs the interpreter
#      (gpu_backend's every_test_model_matches_the_interpreter_on_cuda), if TESTS exists;
#   2. `bbc run --target cuda` against `bbc run --target cpu` on a few specs (outputs as
#      .npy, compared by `bbc`'s own numbers when python3 with numpy is missing: max/mean);
#   3. `bbc bench --target cuda` and `--target gpu` (Vulkan through wgpu: needs NVIDIA's
#      Vulkan ICD and the loader libvulkan.so.1, else reported as unavailable; a loader copied
#      from another x86-64 Linux works when put on LD_LIBRARY_PATH) on convnext_tiny and
#      resnet50 at batch 1 and 32.
#
# Environment: BBC (default target/release/bbc), TESTS (default target/device/gpu_backend),
# RESULTS (a folder for the .npy and .json files; default a temporary one), RUNS (timed
# runs per bench, default 10), CHECKS (which of `tests run bench` to do, default all),
# TARGETS (the bench targets, default `cuda gpu`).
set -uo pipefail

BBC=${BBC:-target/release/bbc}
TESTS=${TESTS:-target/device/gpu_backend}
RESULTS=${RESULTS:-$(mktemp -d)}
RUNS=${RUNS:-10}
CHECKS=${CHECKS:-tests run bench}
TARGETS=${TARGETS:-cuda gpu}
mkdir -p "$RESULTS"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}

if [ ! -x "$BBC" ]; then
    echo "error: no bbc binary at $BBC (build one with cargo build --release --bin bbc)" >&2
    exit 1
fi

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -4
"$BBC" --version

echo "== 1. CUDA executor vs the interpreter, every test model"
if [[ " $CHECKS " != *" tests "* ]]; then
    echo "not asked for"
elif [ -x "$TESTS" ]; then
    timeout 240 "$TESTS" every_test_model_matches_the_interpreter_on_cuda --nocapture \
        --test-threads 1 2>&1 | grep -E "^(Cuda|test |SKIPPED|thread|  |test result)" | head -30
else
    echo "skipped: no test binary at $TESTS"
fi

# Largest |a - b| relative to max(1, max |b|), or the two summaries when numpy is missing.
compare() {
    local a=$1 b=$2
    if python3 -c "import numpy" 2>/dev/null; then
        python3 - "$a" "$b" <<'PY'
import sys, numpy as np
a, b = (np.load(p).astype(np.float64) for p in sys.argv[1:3])
scale = max(1.0, float(np.abs(b).max()))
print(f"max rel diff {float(np.abs(a - b).max()) / scale:.2e}")
PY
    else
        echo "numpy missing: compare the summaries above by eye"
    fi
}

echo "== 2. bbc run --target cuda vs --target cpu"
[[ " $CHECKS " == *" run "* ]] || echo "not asked for"
[[ " $CHECKS " == *" run "* ]] && for case in "specs/convnext.bb convnext_test" "specs/resnet.bb resnet_test_bottleneck" \
    "specs/efficientnet.bb efficientnet_test" "specs/tnt.bb tnt_test" \
    "specs/convnext.bb convnext_tiny"; do
    set -- $case
    spec=$1 model=$2
    ok=1
    for target in cuda cpu; do
        out=$(timeout 120 "$BBC" run "$spec" --model "$model" --target "$target" \
            --output "$RESULTS/$model.$target.npy" --show 0 2>&1) || ok=0
        echo "  $model $target: $(echo "$out" | grep -E '^[a-z_0-9]+: f32|^error' | head -2 | tr '\n' ' ')"
    done
    if [ $ok = 1 ]; then
        echo "  $model: $(compare "$RESULTS/$model.cuda.npy" "$RESULTS/$model.cpu.npy")"
    fi
done

echo "== 3. bench (median / p90 ms, compile s)"
[[ " $CHECKS " == *" bench "* ]] || { echo "not asked for"; exit 0; }
printf "%-14s %5s %-6s %10s %10s %9s  %s\n" model batch target median p90 compile note
for case in "specs/convnext.bb convnext_tiny" "specs/resnet.bb resnet50"; do
    set -- $case
    spec=$1 model=$2
    for batch in 1 32; do
        for target in $TARGETS; do
            json="$RESULTS/bench.$model.$batch.$target.json"
            err=$(timeout 150 "$BBC" bench "$spec" --model "$model" --dim B="$batch" \
                --target "$target" --runs "$RUNS" --warmup 2 --json 2>&1 >"$json")
            if [ -s "$json" ]; then
                # One flat JSON object: pull numbers out without needing jq or python.
                field() { grep -o "\"$1\":[^,}]*" "$json" | head -1 | cut -d: -f2; }
                printf "%-14s %5s %-6s %10.3f %10.3f %9.2f  %s\n" "$model" "$batch" "$target" \
                    "$(field median_ms)" "$(field p90_ms)" "$(awk "BEGIN { print $(field compile_ms) / 1000 }")" \
                    "$(grep -o '"device":"[^"]*"' "$json" | cut -d'"' -f4)"
            else
                printf "%-14s %5s %-6s %10s %10s %9s  %s\n" "$model" "$batch" "$target" - - - \
                    "$(echo "$err" | grep -m1 -E 'error|panicked' | cut -c1-110)"
            fi
        done
    done
done
echo "results in $RESULTS"
