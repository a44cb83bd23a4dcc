//! The CPU executable against the interpreter (the oracle): every reference fixture (real
//! weights) and every spec's test models (seeded weights, random inputs) are optimised at
//! -O2, compiled, run, and compared with the interpreter on the unoptimised graph; the test
//! models also in bounds-checked codegen mode. Plus: multi-thread runs match single-thread
//! runs, fallbacks and prepared weights are reported, and a loop-only model runs without
//! allocating.
//!
//! Tolerance: `max |cpu − interp| ≤ TOLERANCE · max(1, max |interp|)` per output. The
//! elementwise, normalisation and pooling kernels agree with the reference to a few ulps (it
//! rounds the same f32 operations; reductions accumulate in f32 instead of f64); the
//! contractions dominate: the GEMM accumulates in f32 in a blocked order where the reference
//! accumulates in f64, an error growing with the depth `K` and compounding over layers. The
//! largest deviation over the fixtures (printed by the test) was 1.6e-6, on res2net50_26w_4s;
//! the bound leaves an order of magnitude for other GEMM blockings and thread counts.

mod common;

use bbc::compiler::codegen::cpu::plan::{
    compile, CompileError, ExecError, ExecOptions, Executable,
};
use bbc::compiler::codegen::cpu::Options;
use bbc::compiler::{elab, interp, ir, stats, weights};
use bbc::runtime::{Rng, Tensor};
use common::models::{deviation, from_source, optimized, seeded, test_models, with_data, Model};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};

/// Relative to the output's scale; see the module documentation.
const TOLERANCE: f64 = 2e-5;

/// Counts the allocations of the current thread (so concurrent tests do not interfere).
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

/// Every reference fixture with its weights and inputs.
fn fixtures() -> Vec<Model> {
    common::reference_fixtures()
        .into_iter()
        .map(|f| Model {
            label: f.label,
            graph: f.model.graph,
            weights: f.weights,
            inputs: f.inputs,
        })
        .collect()
}

/// Compiles `m` at -O2 and checks it against the interpreter; returns the deviation.
fn check(m: &Model, opts: &ExecOptions) -> f64 {
    let reference = interp::run(&m.graph, &m.inputs, &m.weights)
        .unwrap_or_else(|e| panic!("{}: interpreter: {e}", m.label));
    let mut exe = compile(&optimized(&m.graph), &m.weights, opts)
        .unwrap_or_else(|e| panic!("{}: {e}", m.label));
    // Twice: the second run reuses the arena the first one left dirty.
    for _ in 0..2 {
        let got = exe
            .run(&m.inputs)
            .unwrap_or_else(|e| panic!("{}: {e}", m.label));
        let dev = deviation(&got, &reference);
        assert!(
            dev <= TOLERANCE,
            "{}: the executable deviates by {dev:e} (fallbacks: {:?})",
            m.label,
            exe.stats().fallbacks
        );
    }
    deviation(&exe.run(&m.inputs).expect("runs"), &reference)
}

fn threads(n: usize) -> ExecOptions {
    ExecOptions {
        threads: n,
        ..ExecOptions::default()
    }
}

#[test]
fn every_reference_fixture_matches_the_interpreter() {
    let models = fixtures();
    assert!(models.len() >= 20, "fixtures missing");
    let mut worst = (0.0, String::new());
    for m in &models {
        let dev = check(m, &threads(2));
        if dev > worst.0 {
            worst = (dev, m.label.clone());
        }
    }
    println!("largest deviation: {:e} ({})", worst.0, worst.1);
}

#[test]
fn every_test_model_matches_the_interpreter_in_both_codegen_modes() {
    let models = test_models();
    assert!(models.len() >= 15, "test models missing");
    let checked = ExecOptions {
        threads: 2,
        codegen: Options {
            bounds_checked: true,
            ..Options::default()
        },
    };
    for m in &models {
        check(m, &threads(2));
        check(m, &checked);
    }
}

#[test]
fn more_threads_compute_what_one_thread_does() {
    let m = seeded(
        "specs/convnext.bb",
        "convnext_test",
        &[("H", 45), ("W", 38)],
    );
    let graph = optimized(&m.graph);
    let run = |n: usize| {
        let mut exe = compile(&graph, &m.weights, &threads(n)).expect("compiles");
        assert_eq!(exe.stats().threads, n);
        exe.run(&m.inputs).expect("runs")
    };
    let one = run(1);
    for n in [2, 3] {
        let dev = deviation(&run(n), &one);
        assert!(dev <= 1e-5, "{n} threads deviate by {dev:e}");
    }
}

/// With more than one thread, loop kernels are compiled on helper threads while the plan
/// is built, and the steps that run them are resolved once they are compiled (a depthwise
/// step whose band loop is one waits for it). The plan is the same as one thread's: the
/// same steps in the same order, the same code, the same results.
#[test]
fn kernels_compiled_on_helper_threads_give_the_same_plan() {
    for (spec, model) in [
        // Concatenations read by BatchNorm + ReLU: many loop kernels.
        ("specs/densenet.bb", "densenet_test"),
        // Depthwise convolutions with LayerNorm in pixel bands: steps that must wait.
        ("specs/convnext.bb", "convnext_test"),
    ] {
        let m = seeded(spec, model, &[]);
        let graph = optimized(&m.graph);
        let build = |n: usize| compile(&graph, &m.weights, &threads(n)).expect("compiles");
        let (mut one, mut two) = (build(1), build(2));
        let (a, b) = (one.stats(), two.stats());
        assert!(a.loop_kernels > 0, "{model}");
        if model == "convnext_test" {
            assert!(
                a.band_groups > 0,
                "{model} has no depthwise step that waits"
            );
        }
        assert_eq!(
            (a.loop_kernels, a.code_bytes, a.reused_kernels),
            (b.loop_kernels, b.code_bytes, b.reused_kernels),
            "{model}"
        );
        let (want, got) = (one.run(&m.inputs).unwrap(), two.run(&m.inputs).unwrap());
        let dev = deviation(&got, &want);
        assert!(dev <= 1e-5, "{model}: 2 threads deviate by {dev:e}");
        let steps = |e: &mut Executable| {
            e.set_profiling(true);
            e.run(&m.inputs).unwrap();
            let mut steps: Vec<_> = e.profile().into_iter().map(|(n, k, _)| (n, k)).collect();
            steps.sort();
            steps
        };
        assert_eq!(steps(&mut one), steps(&mut two), "{model}");
    }
}

/// 1x1 convolutions on maps large enough for the direct register kernel (where the CPU has
/// AVX2), at batch 1 and 2: EfficientNet's expanding convolutions with BatchNorm + SiLU
/// applied to the accumulators, its projections whose residual add runs on finished tiles,
/// and a bottleneck ResNet's 1x1 + BatchNorm + ReLU, on 1 to 3 threads.
#[test]
fn pointwise_convolutions_on_large_maps_match_the_interpreter() {
    for (spec, model, size) in [
        ("specs/efficientnet.bb", "efficientnet_test", 64),
        ("specs/resnet.bb", "resnet_test_bottleneck", 96),
    ] {
        for batch in [1, 2] {
            let m = seeded(spec, model, &[("B", batch), ("H", size), ("W", size)]);
            for n in [1, 2, 3] {
                check(&m, &threads(n));
            }
        }
    }
}

/// ConvNeXt's channels-last MLP at batch > 1: fc2 stores through the permute back to NCHW,
/// which is one strided matrix per image, not over the whole batch; it must still compile
/// to a contraction (no reference fallback) and compute the interpreter's values. Its
/// product is computed as it stands (pixels x channels, the activation read row-major) and
/// stored column-major, straight into the NCHW output, rather than scattered from scratch
/// or transposed into a column-major activation operand; its bias and residual add then
/// run natively on the transposed tiles, as fc1's bias and GELU do on its own.
#[test]
fn batched_channels_last_mlp_has_no_fallback() {
    for batch in [1, 3] {
        let m = seeded(
            "specs/convnext.bb",
            "convnext_test_linear",
            &[("B", batch), ("H", 64), ("W", 64)],
        );
        check(&m, &threads(2));
        let exe = compile(&optimized(&m.graph), &m.weights, &threads(1)).expect("compiles");
        let s = exe.stats();
        assert!(s.fallbacks.is_empty(), "fallbacks: {:?}", s.fallbacks);
        assert_eq!(s.scattered_products, 0, "{s:?}");
        assert!(s.native_epilogues >= 8, "fc1 and fc2 of four blocks: {s:?}");
    }
}

/// The graph of the last model of `.bb` source `source`, named `file` in diagnostics.
fn elaborated(file: &str, source: &str) -> ir::Graph {
    let program =
        elab::Program::from_source(file, source).unwrap_or_else(|e| panic!("{}", e.render()));
    program
        .elaborate(&elab::Options::default())
        .unwrap_or_else(|d| panic!("{d:?}"))
        .graph
}

/// Max pooling runs on the runtime's kernel, one step per pool, and computes the
/// interpreter's values: padded, ceil-mode (the last window hangs past the input),
/// rectangular and stride-1 windows, on one to three threads, including a NaN.
#[test]
fn max_pools_run_on_the_runtime_kernel() {
    let source = "bb 0.1;\nmodel pools() {\n    input x: f32[2, 3, 13, 11];\n    \
                  a = max_pool2d(x, k=3, s=2, pad=1);\n    \
                  b = max_pool2d(x, k=3, s=2, ceil_mode=true);\n    \
                  c = max_pool2d(x, k=[2, 3], s=[1, 2], pad=[1, 1]);\n    \
                  d = max_pool2d(relu(x), k=2);\n    \
                  output ya = a;\n    output yb = b;\n    output yc = c;\n    \
                  output yd = d;\n}\n";
    let graph = elaborated("pools.bb", source);
    let mut x = Rng::new(3).standard_normal_tensor(&[2, 3, 13, 11]);
    x.as_slice_mut().expect("contiguous")[40] = f32::NAN;
    let pools = Model {
        label: "pools".into(),
        weights: weights::init_weights(&graph, 1),
        inputs: HashMap::from([("x".to_string(), x)]),
        graph,
    };
    for n in [1, 2, 3] {
        check(&pools, &threads(n));
    }
    let exe = compile(&optimized(&pools.graph), &pools.weights, &threads(2)).expect("compiles");
    assert_eq!(exe.stats().pool_kernels, 4, "{:?}", exe.stats());
}

/// A residual add whose shortcut is the 1x1 convolution's own input (`x + conv(x)`, one
/// group operand read both ways) keeps the shortcut's bytes apart from the output: the
/// kernel stores each block of output channels while later blocks still read the input.
/// Channel counts past one register block, on 1 to 3 threads, with a layer scale and with a
/// ReLU after the add.
#[test]
fn a_residual_that_is_the_convolutions_input_is_not_overwritten() {
    for (c, pixels) in [(8, 128), (64, 127), (24, 200)] {
        let source = format!(
            "bb 0.1;\nmodel m() {{\n    input x: f32[1, {c}, 1, {pixels}];\n    \
             a = conv2d(x, out={c}, k=1, bias=false);\n    \
             b = conv2d(x, out={c}, k=1);\n    \
             param g: f32[{c}, 1, 1] = uniform(1.0);\n    \
             output ya = x + a;\n    output yb = relu(b * g + x);\n}}\n"
        );
        let graph = elaborated("residual.bb", &source);
        let model = Model {
            label: format!("residual {c}x{pixels}"),
            weights: weights::init_weights(&graph, 2),
            inputs: HashMap::from([(
                "x".to_string(),
                Rng::new(5).standard_normal_tensor(&[1, c, 1, pixels]),
            )]),
            graph,
        };
        for n in [1, 2, 3] {
            check(&model, &threads(n));
        }
    }
}

/// Resizing runs on the runtime's kernel, one step per `upsample`, and computes the
/// interpreter's values: nearest by a scale and to a size that is no multiple, bilinear with
/// and without `align_corners`, up and down, on one to three threads.
#[test]
fn upsamples_run_on_the_runtime_kernel() {
    let source = "bb 0.1;\nmodel resize() {\n    input x: f32[2, 3, 7, 5];\n    \
                  a = upsample(x, scale=2);\n    \
                  b = upsample(x, size=(11, 13));\n    \
                  c = upsample(x, size=(16, 9), mode=\"bilinear\");\n    \
                  d = upsample(x, size=(29, 3), mode=\"bilinear\", align_corners=true);\n    \
                  e = upsample(x, size=(4, 2), mode=\"bilinear\");\n    \
                  output ya = a;\n    output yb = b;\n    output yc = c;\n    \
                  output yd = d;\n    output ye = e;\n}\n";
    let graph = elaborated("resize.bb", source);
    let resize = Model {
        label: "resize".into(),
        weights: weights::init_weights(&graph, 1),
        inputs: HashMap::from([(
            "x".to_string(),
            Rng::new(4).standard_normal_tensor(&[2, 3, 7, 5]),
        )]),
        graph,
    };
    for n in [1, 2, 3] {
        check(&resize, &threads(n));
    }
    let exe = compile(&optimized(&resize.graph), &resize.weights, &threads(2)).expect("compiles");
    assert_eq!(exe.stats().pool_kernels, 5, "{:?}", exe.stats());
}

/// A Haar transform read only by a slice is computed in one group with it, just the sliced
/// elements (WaveCNet's LL band), and gives the interpreter's values: bands by stride, a
/// channel range, rows of the inverse; a transform read twice is computed whole.
#[test]
fn sliced_haar_transforms_compute_only_the_slice() {
    let source = "bb 0.1;\nmodel bands() {\n    input x: f32[2, 8, 6, 10];\n    \
                  output ll = slice(haar_dwt(x), axis=1, start=0, end=32, step=4);\n    \
                  output hh = slice(haar_dwt(x), axis=1, start=3, end=32, step=4);\n    \
                  output some = relu(slice(haar_dwt(x), axis=1, start=4, end=9));\n    \
                  output rows = slice(haar_idwt(x), axis=2, start=1, end=12, step=3);\n    \
                  both = haar_dwt(x);\n    \
                  output first = slice(both, axis=1, start=0, end=16);\n    \
                  output whole = both;\n}\n";
    let graph = elaborated("bands.bb", source);
    let bands = Model {
        label: "bands".into(),
        weights: weights::init_weights(&graph, 1),
        inputs: HashMap::from([(
            "x".to_string(),
            Rng::new(8).standard_normal_tensor(&[2, 8, 6, 10]),
        )]),
        graph,
    };
    for n in [1, 2] {
        check(&bands, &threads(n));
    }
    let graph = optimized(&bands.graph);
    let unfused: Vec<_> = graph
        .topo_order()
        .into_iter()
        .filter(|&id| {
            let op = graph.node(id).op().map(|op| op.name);
            matches!(op, Some("haar_dwt" | "haar_idwt"))
        })
        .collect();
    assert_eq!(unfused.len(), 1, "transforms outside a group: {unfused:?}");
}

/// A softmax over the last axis runs on the runtime's kernel, one step each, and computes
/// the interpreter's values: rows shorter than, equal to and longer than a vector, an
/// attention's scores (its products on the GEMM kernels, the CPU leaving attention
/// unfused), a row holding a NaN; a softmax over another axis stays generated code.
#[test]
fn last_axis_softmaxes_run_on_the_runtime_kernel() {
    let source = "bb 0.1;\nmodel soft() {\n    input x: f32[2, 3, 5, 13];\n    \
                  input q: f32[1, 2, 9, 8];\n    input k: f32[1, 2, 9, 8];\n    \
                  a = softmax(x, axis=-1);\n    b = softmax(x * 3.0, axis=3);\n    \
                  c = softmax(x, axis=1);\n    \
                  kt = rearrange(k, \"b h n d -> b h d n\");\n    \
                  s = softmax(matmul(q, kt) * 0.25, axis=-1);\n    \
                  output ya = a;\n    output yb = b;\n    output yc = c;\n    \
                  output ys = matmul(s, k);\n}\n";
    let graph = elaborated("soft.bb", source);
    let mut rng = Rng::new(5);
    let mut x = rng.standard_normal_tensor(&[2, 3, 5, 13]);
    x.as_slice_mut().expect("contiguous")[30] = f32::NAN;
    let model = Model {
        label: "softmax".into(),
        weights: weights::init_weights(&graph, 1),
        inputs: HashMap::from([
            ("x".to_string(), x),
            ("q".to_string(), rng.standard_normal_tensor(&[1, 2, 9, 8])),
            ("k".to_string(), rng.standard_normal_tensor(&[1, 2, 9, 8])),
        ]),
        graph,
    };
    for n in [1, 2, 3] {
        check(&model, &threads(n));
    }
    let exe = compile(&optimized(&model.graph), &model.weights, &threads(2)).expect("compiles");
    assert_eq!(exe.stats().norm_kernels, 3, "{:?}", exe.stats());
}

/// Means over each channel's plane (squeeze-excitation's, global pooling's) with the
/// channels in the vector lanes reduce each lane's plane as a contiguous vectorised stream;
/// against the interpreter with channel counts that leave a scalar tail, odd plane sizes,
/// batches, `keepdim` either way, a mean over the last axis of rows far apart, and one over
/// the channels (contiguous across the lanes, which keeps the vector loads), on 1-3 threads.
#[test]
fn plane_means_match_the_interpreter() {
    let source = "bb 0.1;\nmodel means() {\n    input x: f32[2, 6, 7, 9];\n    \
                  input y: f32[2, 9, 16, 16];\n    input z: f32[2, 5, 40];\n    \
                  a = mean(x, axes=[2, 3], keepdim=true);\n    \
                  b = mean(relu(y), axes=[2, 3]);\n    \
                  c = mean(z, axes=[2]);\n    \
                  d = mean(x, axes=[1]);\n    \
                  output ya = a;\n    output yb = b;\n    output yc = c;\n    \
                  output yd = d;\n}\n";
    let graph = elaborated("means.bb", source);
    let mut rng = Rng::new(5);
    let inputs = [
        ("x", vec![2, 6, 7, 9]),
        ("y", vec![2, 9, 16, 16]),
        ("z", vec![2, 5, 40]),
    ]
    .into_iter()
    .map(|(name, shape)| (name.to_string(), rng.standard_normal_tensor(&shape)))
    .collect();
    let means = Model {
        label: "means".into(),
        weights: weights::init_weights(&graph, 1),
        inputs,
        graph,
    };
    for n in [1, 2, 3] {
        check(&means, &threads(n));
    }
}

/// Zero-size tensors (an empty slice, an empty part of a split) compile and run: an empty
/// output, an activation of one, a concatenation with one, and a sum over an empty axis,
/// which is zero, as PyTorch gives it (+0), in the executable and the interpreter alike.
#[test]
fn zero_size_tensors_compile_and_run() {
    let source = "bb 0.1;\nmodel empty() {\n    input x: f32[1, 3, 6, 5];\n    \
                  e = slice(x, axis=2, start=4, end=2);\n    \
                  output ya = e;\n    output yb = relu(e);\n    \
                  output yc = concat([x, e], axis=2) * 2.0;\n    \
                  output yd = sum(slice(x, axis=2, start=4, end=4), axes=[2]);\n    \
                  (p, q) = split(x, [0, 3], axis=1);\n    output ye = q + 1.0;\n}\n";
    let graph = elaborated("empty.bb", source);
    let x = Rng::new(7).standard_normal_tensor(&[1, 3, 6, 5]);
    let empty = Model {
        label: "empty".into(),
        weights: weights::init_weights(&graph, 1),
        inputs: HashMap::from([("x".to_string(), x)]),
        graph,
    };
    for n in [1, 2] {
        check(&empty, &threads(n));
    }
    let reference = interp::run(&empty.graph, &empty.inputs, &empty.weights).expect("runs");
    let mut exe = compile(&optimized(&empty.graph), &empty.weights, &threads(2)).expect("compiles");
    let got = exe.run(&empty.inputs).expect("runs");
    for outputs in [&reference, &got] {
        assert_eq!(outputs["ya"].shape(), &[1, 3, 0, 5]);
        assert_eq!(outputs["yb"].shape(), &[1, 3, 0, 5]);
        let sums = &outputs["yd"];
        assert_eq!(sums.shape(), &[1, 3, 5]);
        assert!(sums.iter().all(|v| v.to_bits() == 0), "{sums:?}");
        assert_eq!(outputs["ye"].shape(), &[1, 3, 6, 5]);
    }
}

/// Ops on the runtime's kernels compile and run on an empty batch (no step computes an
/// empty value), with a panic-free plan on every thread count: convolutions (direct,
/// grouped, 1-D), pooling, resizing, a mean over the planes, a batched product; and a
/// convolution over a concat with an empty part, which the concat fusion leaves alone.
#[test]
fn empty_batches_on_the_runtime_kernels_compile_and_run() {
    let source = "bb 0.1;\nmodel empty() {\n    input x: f32[1, 4, 5, 5];\n    \
                  input s: f32[1, 7, 6];\n    input t: f32[1, 6, 5];\n    \
                  e = slice(x, axis=0, start=1, end=1);\n    \
                  a = conv2d(e, out=3, k=3);\n    \
                  b = conv2d(e, out=4, k=3, pad=1, groups=2);\n    \
                  c = conv1d(slice(s, axis=0, start=1, end=1), out=3, k=3);\n    \
                  n = slice(x, axis=1, start=0, end=0);\n    \
                  d = conv2d(concat([n, x], axis=1), out=2, k=1);\n    \
                  output ya = a;\n    output yb = b;\n    output yc = c;\n    \
                  output yd = d;\n    output ye = max_pool2d(e, k=2);\n    \
                  output yf = upsample(e, scale=2);\n    \
                  output yg = mean(e, axes=[2, 3]);\n    \
                  output yh = matmul(slice(s, axis=0, start=1, end=1), t);\n}\n";
    let graph = elaborated("empty_batch.bb", source);
    let mut rng = Rng::new(8);
    let model = Model {
        label: "empty batch".into(),
        weights: weights::init_weights(&graph, 1),
        inputs: HashMap::from([
            ("x".to_string(), rng.standard_normal_tensor(&[1, 4, 5, 5])),
            ("s".to_string(), rng.standard_normal_tensor(&[1, 7, 6])),
            ("t".to_string(), rng.standard_normal_tensor(&[1, 6, 5])),
        ]),
        graph,
    };
    for n in [1, 2, 3] {
        check(&model, &threads(n));
    }
    let mut exe = compile(&optimized(&model.graph), &model.weights, &threads(2)).expect("compiles");
    let got = exe.run(&model.inputs).expect("runs");
    assert_eq!(got["ya"].shape(), &[0, 3, 3, 3]);
    assert_eq!(got["yh"].shape(), &[0, 7, 5]);
    assert_eq!(got["yd"].shape(), &[1, 2, 5, 5]);
}

/// The outputs of the one-input model `source` on `x`: compiled at -O2 (one thread), and
/// from the interpreter; compared element by element by the caller (special values make
/// [`deviation`] unusable).
fn compiled_and_interpreted(
    file: &str,
    source: &str,
    x: Tensor,
) -> (BTreeMap<String, Tensor>, BTreeMap<String, Tensor>) {
    let graph = elaborated(file, source);
    let weights = weights::init_weights(&graph, 1);
    let inputs = HashMap::from([("x".to_string(), x)]);
    let want = interp::run(&graph, &inputs, &weights).expect("interprets");
    let mut exe = compile(&optimized(&graph), &weights, &threads(1)).expect("compiles");
    (exe.run(&inputs).expect("runs"), want)
}

/// ELU's negative side is `alpha·expm1(x)`, accurate relative to its value where
/// `exp(x) − 1` cancels (it had 2e-4 relative error at −2.5e-4 and gave 0 for |x| < 3e-8).
/// Nineteen values, so both the vector loop and its scalar tail run them.
#[test]
fn elu_is_accurate_near_zero() {
    let xs = [
        1e-8,
        -1e-8,
        -6e-8,
        -1e-6,
        -2.5e-4,
        -1e-3,
        -0.01,
        -0.3,
        -0.34,
        -0.35,
        -0.7,
        -1.0,
        -3.0,
        -20.0,
        -100.0,
        -1e-30,
        2.0,
        f32::NEG_INFINITY,
        f32::NAN,
    ];
    let source = "bb 0.1;\nmodel m() {\n    input x: f32[19];\n    \
                  output ya = elu(x);\n    output yb = elu(x, alpha=0.5);\n}\n";
    let x = Tensor::from_shape_vec(vec![xs.len()], xs.to_vec()).expect("sized");
    let (got, want) = compiled_and_interpreted("elu.bb", source, x);
    for name in ["ya", "yb"] {
        for ((&x, &g), &w) in xs.iter().zip(&got[name]).zip(&want[name]) {
            let ok = (g.is_nan() && w.is_nan()) || (g - w).abs() <= 1e-6 * w.abs();
            assert!(ok, "{name}: elu({x:e}) = {g:e}, the interpreter {w:e}");
        }
    }
}

/// GELU of ±inf, both forms, is what the interpreter's formula gives (and PyTorch's kernels):
/// +inf, and NaN at −inf (`−inf·0`, erf or tanh saturating to −1); large negative inputs give
/// −0, not x times the approximations' last ulp; NaN propagates. The runtime's native GELU
/// has the same checks in its own tests.
#[test]
fn gelu_of_infinities_matches_the_interpreter() {
    let xs = [
        f32::NEG_INFINITY,
        f32::INFINITY,
        f32::NAN,
        -1e30,
        1e30,
        -10.0,
        10.0,
        -3.0,
        0.5,
    ];
    let source = "bb 0.1;\nmodel m() {\n    input x: f32[9];\n    \
                  output ya = gelu(x);\n    output yb = gelu(x, approximate=\"tanh\");\n}\n";
    let x = Tensor::from_shape_vec(vec![xs.len()], xs.to_vec()).expect("sized");
    let (got, want) = compiled_and_interpreted("gelu.bb", source, x);
    for name in ["ya", "yb"] {
        let (g, w) = (&got[name], &want[name]);
        assert!(w[0].is_nan() && w[1] == f32::INFINITY, "{name}: {w:?}");
        for ((&x, &g), &w) in xs.iter().zip(g).zip(w) {
            let ok =
                (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= 1e-5 * w.abs().max(1.0);
            assert!(ok, "{name}: gelu({x:e}) = {g:e}, the interpreter {w:e}");
        }
    }
}

/// `maximum` and `minimum` take a number on either side, as `+` and `*` do: a float, an int,
/// and in a `seq`, where the number is the second operand (the running value the first).
/// Compiled and interpreted alike, and the interpreter's values are the clamps they spell.
#[test]
fn maximum_and_minimum_take_numbers() {
    let source = "bb 0.1;\nmodel clip() {\n    input x: f32[2, 3, 5, 7];\n    \
                  output ya = maximum(x, 0.0);\n    output yb = minimum(0.5, x);\n    \
                  output yc = maximum(minimum(x, 1), -1);\n    \
                  output yd = x |> seq { maximum(-0.25); minimum(b=0.75); };\n}\n";
    let graph = elaborated("clip.bb", source);
    let mut x = Rng::new(6).standard_normal_tensor(&[2, 3, 5, 7]);
    x.as_slice_mut().expect("contiguous")[11] = f32::NAN;
    let model = Model {
        label: "clip".into(),
        weights: weights::init_weights(&graph, 1),
        inputs: HashMap::from([("x".to_string(), x.clone())]),
        graph,
    };
    check(&model, &threads(1));
    let want = interp::run(&model.graph, &model.inputs, &model.weights).expect("interprets");
    let clamps: [(&str, f32, f32); 4] = [
        ("ya", 0.0, f32::INFINITY),
        ("yb", f32::NEG_INFINITY, 0.5),
        ("yc", -1.0, 1.0),
        ("yd", -0.25, 0.75),
    ];
    for (name, lo, hi) in clamps {
        for (&v, &y) in x.iter().zip(&want[name]) {
            let clamped = if v.is_nan() { v } else { v.clamp(lo, hi) };
            assert!(
                y.to_bits() == clamped.to_bits() || (y.is_nan() && v.is_nan()),
                "{name}({v}) = {y}"
            );
        }
    }
}

/// A chain of 1500 elementwise ops compiles and runs on a thread with a 2 MiB stack (an
/// embedding program's): fusion cuts it into groups of bounded length, where one group's
/// nested expression overflowed the stack.
#[test]
fn long_elementwise_chains_compile_on_a_small_stack() {
    let mut source =
        String::from("bb 0.1;\nmodel chain() {\n    input x: f32[2, 3];\n    h0 = x;\n");
    for i in 0..1500 {
        let op = if i % 2 == 0 { "relu" } else { "tanh" };
        source += &format!("    h{} = {op}(h{i}) + 0.25;\n", i + 1);
    }
    source += "    output y = h1500;\n}\n";
    let graph = elaborated("chain.bb", &source);
    let chain = Model {
        label: "chain".into(),
        weights: weights::init_weights(&graph, 1),
        inputs: HashMap::from([("x".to_string(), Rng::new(9).standard_normal_tensor(&[2, 3]))]),
        graph,
    };
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            check(&chain, &threads(1));
        })
        .expect("spawns")
        .join()
        .expect("compiles and matches the interpreter");
}

/// One step per kernel `bbc stats` counts (two for a group split around its depthwise
/// convolution); weights folded at load time are not steps; nodes without a kernel are
/// reported as fallbacks and still compute the right values.
#[test]
fn steps_prepared_weights_and_fallbacks_are_reported() {
    let convnext = seeded("specs/convnext.bb", "convnext_test", &[]);
    let graph = optimized(&convnext.graph);
    let exe = compile(&graph, &convnext.weights, &threads(2)).expect("compiles");
    let s = exe.stats();
    // Each depthwise conv + LayerNorm group runs as one step: the runtime's depthwise
    // kernel, with the normalisation applied to each finished band of pixels.
    assert!(s.band_groups > 0, "{s:?}");
    // The norms of their own (after the stem, before each downsampling) run on the
    // runtime's kernel too.
    assert!(s.norm_kernels > 0, "{s:?}");
    assert_eq!(s.steps(), stats::stats(&graph).kernels + s.split_groups);
    assert!(s.fallbacks.is_empty(), "{:?}", s.fallbacks);
    assert!(s.conv_kernels > 0 && s.loop_kernels > 0, "{s:?}");
    assert!(s.prepared_values > 0, "nothing prepared from the weights");
    assert!(s.arena_bytes >= s.arena_lower_bound && s.arena_lower_bound > 0);
    // Every convolution and linear weight is held by the executable, packed by its
    // kernel (padding included) or kept as is.
    let matrices: usize = (convnext.weights.values())
        .filter(|w| w.ndim() >= 2)
        .map(|w| w.len() * 4)
        .sum();
    assert!(s.packed_weight_bytes > 0, "{s:?}");
    assert!(
        s.packed_weight_bytes + s.constant_bytes >= matrices,
        "{s:?}"
    );
    assert!(s.code_bytes > 0);
    assert_eq!(s.times.total(), s.times.stages().iter().map(|x| x.1).sum());

    // `uiqi` has no planned kernel: it runs as host code (the op table's reference), is
    // reported as a fallback, and computes the interpreter's values.
    let source = "bb 0.1;\nmodel q() {\n    input a: f32[2, 3, 12, 10];\n    \
                  input b: f32[2, 3, 12, 10];\n    output y = uiqi(a, b * 0.5 + a);\n}\n";
    let q = with_data("uiqi", from_source("q.bb", source), 0, 4);
    check(&q, &threads(2));
    let graph = optimized(&q.graph);
    let exe = compile(&graph, &q.weights, &threads(1)).expect("compiles");
    let s = exe.stats();
    assert_eq!(s.fallbacks.len(), 1, "{:?}", s.fallbacks);
    assert_eq!(s.fallbacks[0].op, "uiqi", "{:?}", s.fallbacks);
    assert_eq!(s.steps(), stats::stats(&graph).kernels);
}

/// RDN's dense blocks concatenate a growing prefix; the chain is one buffer that each
/// layer's step writes its part of, so the concatenations need no steps, and the model
/// computes the interpreter's values on 1 to 3 threads.
#[test]
fn concatenations_are_written_in_place() {
    // Four layers per block, 32 channels (at 8 the local fusions split over the layers'
    // outputs and the last concatenation goes).
    let program = elab::Program::load(std::path::Path::new("specs/rdn.bb"), &elab::FsLoader)
        .unwrap_or_else(|e| panic!("{}", e.render()));
    let opts = elab::Options {
        model: Some("rdn".into()),
        args: [
            ("D", "2"),
            ("C", "4"),
            ("G", "32"),
            ("G0", "32"),
            ("size", "8"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec(),
        ..Default::default()
    };
    let graph = program
        .elaborate(&opts)
        .unwrap_or_else(|d| panic!("{d:?}"))
        .graph;
    let rdn = with_data("rdn", graph, 3, 6);
    for n in [1, 2, 3] {
        check(&rdn, &threads(n));
    }
    let graph = optimized(&rdn.graph);
    let exe = compile(&graph, &rdn.weights, &threads(2)).expect("compiles");
    let s = exe.stats();
    let concats = graph
        .nodes
        .node_weights()
        .filter(|n| n.op().is_some_and(|op| op.name == "concat"))
        .count();
    // The first block's four are views of one buffer. The second's first copies the block
    // input (which the global fusion reads again) and its first layer into its buffer, the
    // other three are views; the global fusion's concatenation is written by the blocks'
    // last steps.
    assert_eq!((concats, s.concats_in_place), (9, 8), "{s:?}");
    assert_eq!(s.steps() + s.concats_in_place, stats::stats(&graph).kernels);
}

/// Transposed convolutions run on the runtime's planned kernel, with the chain after them
/// (bias, activation, residual add) as their epilogue, and compute the interpreter's values
/// on 1 to 3 threads: with groups, dilation, padding, output padding, a batch, and maps large
/// enough to be cut into several bands and channel blocks; a permute after one stays out of
/// its group.
#[test]
fn transposed_convolutions_are_planned_and_match_the_interpreter() {
    let source = "bb 0.1;\nmodel up() {\n    \
        input x: f32[1, 3, 5, 6];\n    input z: f32[2, 4, 3, 4];\n    \
        input r: f32[1, 8, 11, 13];\n    input big: f32[1, 24, 40, 33];\n    \
        up = conv_transpose2d(x, out=4, k=3, s=2);\n    output y = relu(up);\n    \
        dn = conv_transpose2d(z, out=6, k=2, s=3, pad=1, output_padding=2, dilation=2, \
        groups=2);\n    output w = dn;\n    \
        res = conv_transpose2d(x, out=8, k=3, s=2, bias=false);\n    output v = gelu(res + r);\n    \
        wide = conv_transpose2d(big, out=40, k=4, s=2, pad=1);\n    \
        output u = permute(silu(wide), [0, 2, 3, 1]);\n}\n";
    let up = with_data("up", from_source("up.bb", source), 1, 2);
    for n in [1, 2, 3] {
        check(&up, &threads(n));
    }
    let graph = optimized(&up.graph);
    let exe = compile(&graph, &up.weights, &threads(2)).expect("compiles");
    let s = exe.stats();
    assert!(s.fallbacks.is_empty(), "{:?}", s.fallbacks);
    assert_eq!(s.conv_kernels, 4, "{s:?}");
    // ReLU, GELU after the residual add, and SiLU are each their convolution's epilogue:
    // the permute is the only other step.
    assert_eq!(s.steps(), 5, "{s:?}");
    assert_eq!(s.steps(), stats::stats(&graph).kernels);
}

/// `layer_norm2d` normalises over axis 1 whatever the rank (`[N, C]`, `[N, C, L]`, `[N, C,
/// D, H, W]`), as the interpreter does; the planned norm used to read a rank-3 input as
/// `[C, H, W]` and normalise each value alone.
#[test]
fn channel_norms_of_every_rank_match_the_interpreter() {
    let source = "bb 0.1;\nmodel norms() {\n    \
        input a: f32[3, 5];\n    input b: f32[2, 4, 3];\n    input c: f32[1, 6, 2, 3, 4];\n    \
        output y = layer_norm2d(a);\n    output z = layer_norm2d(b, affine=false);\n    \
        output w = layer_norm2d(c, eps=1e-3);\n}\n";
    let norms = with_data("norms", from_source("norms.bb", source), 3, 4);
    for n in [1, 2] {
        check(&norms, &threads(n));
    }
    let exe = compile(&optimized(&norms.graph), &norms.weights, &threads(2)).expect("compiles");
    assert!(
        exe.stats().fallbacks.is_empty(),
        "{:?}",
        exe.stats().fallbacks
    );
}

#[test]
fn bad_inputs_and_missing_weights_are_errors() {
    let m = seeded("specs/deep_sets.bb", "deep_sets_sum", &[]);
    let graph = optimized(&m.graph);
    let mut exe = compile(&graph, &m.weights, &threads(1)).expect("compiles");
    assert!(matches!(
        exe.run(&HashMap::new()),
        Err(ExecError::Inputs(_))
    ));
    let (name, shape) = exe.inputs()[0].clone();
    let wrong = Tensor::zeros(vec![shape.iter().product::<usize>() + 1]);
    assert!(matches!(
        exe.run(&HashMap::from([(name, wrong)])),
        Err(ExecError::Inputs(_))
    ));
    let mut partial = m.weights.clone();
    partial.pop_first();
    assert!(matches!(
        compile(&graph, &partial, &threads(1)),
        Err(CompileError::Weights(_))
    ));
}

/// Elementwise and reduction kernels only: after the first inference, `run_into` allocates
/// nothing on the calling thread (the pool's workers allocate nothing either; see the
/// runtime's pool tests).
#[test]
fn loop_kernels_run_without_allocating() {
    let graph = ir::parse_text(
        "graph g {
  input %x: f32[64, 256]
  input %y: f32[64, 256]
  %e = exp(%x): f32[64, 256]
  %m = mul(%e, %y): f32[64, 256]
  %t = tanh(%m): f32[64, 256]
  %s = sum(%t) {axes=[1], keepdim=true}: f32[64, 1]
  %d = sub(%t, %s): f32[64, 256]
  output %out = %d
}",
    )
    .expect("parses");
    assert!(ir::verify(&graph).is_empty(), "{:?}", ir::verify(&graph));
    let graph = optimized(&graph);
    let mut exe = compile(&graph, &BTreeMap::new(), &threads(2)).expect("compiles");
    assert!(exe.stats().loop_kernels > 0 && exe.stats().fallbacks.is_empty());
    let rng = Rng::new(1);
    let x = rng.fork("x").standard_normal_tensor(&[64, 256]);
    let y = rng.fork("y").standard_normal_tensor(&[64, 256]);
    let mut out = vec![0.0f32; 64 * 256];
    let ins = [x.as_slice().unwrap(), y.as_slice().unwrap()];
    exe.run_into(&ins, &mut [&mut out]).expect("runs");
    let before = allocations();
    for _ in 0..10 {
        exe.run_into(&ins, &mut [&mut out]).expect("runs");
    }
    assert_eq!(allocations() - before, 0, "run_into allocated");
    let want = interp::run(
        &graph,
        &HashMap::from([("x".to_string(), x), ("y".to_string(), y)]),
        &BTreeMap::new(),
    )
    .expect("interpreter");
    let err = want["out"]
        .iter()
        .zip(&out)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(err <= 1e-4, "{err}");
}

/// An executable can move to another thread (a server hands one to each worker).
#[test]
fn executables_are_send() {
    fn send<T: Send>(_: &T) {}
    let m = seeded("specs/deep_sets.bb", "deep_sets_sum", &[]);
    let mut exe = compile(&optimized(&m.graph), &m.weights, &threads(2)).expect("compiles");
    send(&exe);
    let want = exe.run(&m.inputs).expect("runs");
    let got = std::thread::spawn(move || exe.run(&m.inputs).expect("runs"))
        .join()
        .expect("no panic");
    assert_eq!(deviation(&got, &want), 0.0);
}
