//! The GPU backends against the interpreter (the oracle), and the `bbc` commands around them.
//!
//! - wgpu: every spec's test model, optimised at -O2, through the WGSL plan builder and the
//!   wgpu executor (lavapipe in CI), then a program written by `bbc compile -o DIR`, loaded
//!   with `load_dir` and run, and `bbc run --target gpu` against `bbc run --interp`.
//! - CUDA: the same models on the first CUDA device when the driver, NVRTC and a device
//!   exist; otherwise a clear error from `bbc run --target cuda` (exit code 1).
//!
//! Without a Vulkan adapter the wgpu tests print `SKIPPED: no GPU adapter (...)` and pass,
//! unless `BBC_REQUIRE_GPU` is set (CI sets it), when they fail.
//!
//! Tolerance: `max |gpu − interp| ≤ TOLERANCE · max(1, max |interp|)` per output, as in
//! tests/cpu_backend.rs. The kernels compute in f32 where the interpreter accumulates in f64;
//! the tiled products sum in another order than the CPU's GEMM, and WGSL's `exp`/`tanh` on
//! lavapipe and CUDA's `expf`/`tanhf` differ from the host's libm by a few ulps. The largest
//! deviation over the test models (printed by the test) was 5.1e-7 on lavapipe (cbnet_test);
//! the bound, the CPU backend's, leaves more than an order of magnitude. Products on tensor
//! cores (TF32, ~1e-3) are not tested here: they are off unless asked for.

mod common;

use bbc::compiler::codegen::gpu::{plan::build, Dialect, GpuOptions};
use bbc::compiler::interp;
use bbc::runtime::gpu::wgpu::{WgpuDevice, WgpuExecutor};
use bbc::runtime::gpu::{load_dir, Executor};
use bbc::runtime::read_npy;
use common::models::{
    deviation, from_source, optimized_for, seeded, test_models, with_data, Model,
};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Relative to the output's scale; see the module documentation.
const TOLERANCE: f64 = 2e-5;

/// The one Vulkan device of this test binary: opening one costs ~100 ms and lavapipe compiles
/// each pipeline lazily, so every test shares it.
fn device() -> Option<&'static WgpuDevice> {
    static DEVICE: OnceLock<Result<WgpuDevice, String>> = OnceLock::new();
    match DEVICE.get_or_init(|| WgpuDevice::open().map_err(|e| e.to_string())) {
        Ok(device) => Some(device),
        Err(e) if std::env::var_os("BBC_REQUIRE_GPU").is_some() => {
            panic!("BBC_REQUIRE_GPU is set, but: {e}")
        }
        Err(e) => {
            skipped(e);
            None
        }
    }
}

/// Says on the terminal that a test did not run: written to stderr directly, because the
/// test harness hides what `println!` and `eprintln!` print in passing tests.
fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// Why the CUDA tests cannot run here (no driver, no NVRTC or no device), if they cannot.
fn cuda_missing() -> Option<String> {
    bbc::runtime::gpu::cuda::probe()
        .err()
        .map(|e| e.to_string())
}

/// Runs `m` through `dialect`'s plan and executor (twice: the second run finds the arena
/// dirty) and returns the deviation from the interpreter.
fn check(m: &Model, dialect: Dialect, load: &dyn Fn(&Model) -> Box<dyn Executor>) -> f64 {
    let reference = interp::run(&m.graph, &m.inputs, &m.weights)
        .unwrap_or_else(|e| panic!("{}: interpreter: {e}", m.label));
    let mut exe = load(m);
    assert_eq!(exe.plan().dialect, dialect);
    let mut worst: f64 = 0.0;
    for _ in 0..2 {
        let got = exe
            .run(&m.inputs)
            .unwrap_or_else(|e| panic!("{}: {e}", m.label));
        let dev = deviation(&got, &reference);
        assert!(
            dev <= TOLERANCE,
            "{}: {dialect:?} deviates by {dev:e}",
            m.label
        );
        worst = worst.max(dev);
    }
    worst
}

/// `m`'s plan in `dialect` with exact products.
fn plan(
    m: &Model,
    dialect: Dialect,
) -> (bbc::runtime::gpu::LaunchPlan, bbc::runtime::gpu::Constants) {
    build(
        &optimized_for(&m.graph, bbc::Target::Gpu),
        &m.weights,
        dialect,
        &GpuOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", m.label))
}

/// Checks every test model in `dialect`; prints and returns the largest deviation.
fn check_all(dialect: Dialect, load: &dyn Fn(&Model) -> Box<dyn Executor>) {
    let models = test_models();
    assert!(models.len() >= 15, "test models missing");
    let mut worst = (0.0, String::new());
    for m in &models {
        let dev = check(m, dialect, load);
        if dev > worst.0 {
            worst = (dev, m.label.clone());
        }
    }
    println!(
        "{dialect:?}: {} models, largest deviation {:e} ({})",
        models.len(),
        worst.0,
        worst.1
    );
}

#[test]
fn every_test_model_matches_the_interpreter_on_wgpu() {
    let Some(gpu) = device() else { return };
    check_all(Dialect::Wgsl, &|m| {
        let (plan, constants) = plan(m, Dialect::Wgsl);
        Box::new(
            WgpuExecutor::with_device(gpu, plan, &constants)
                .unwrap_or_else(|e| panic!("{}: {e}", m.label)),
        )
    });
}

#[test]
fn every_test_model_matches_the_interpreter_on_cuda() {
    if let Some(why) = cuda_missing() {
        skipped(&format!("no CUDA ({why})"));
        return;
    }
    check_all(Dialect::Cuda, &|m| {
        let (plan, constants) = plan(m, Dialect::Cuda);
        bbc::runtime::gpu::open(plan, &constants).unwrap_or_else(|e| panic!("{}: {e}", m.label))
    });
}

/// Transposed convolutions with the chain after them as their epilogue (a grouped one with
/// output padding and ReLU, one with GELU, a dilated one with a residual add) match the
/// interpreter on each GPU dialect present.
#[test]
fn transposed_convolution_epilogues_match_the_interpreter_on_gpus() {
    let source = "bb 0.1;\nmodel decoder() {\n    input z: f32[2, 8, 5, 6];\n    \
        input r: f32[2, 3, 13, 16];\n    \
        up1 = conv_transpose2d(z, out=6, k=3, s=2, pad=1, output_padding=1, groups=2);\n    \
        up2 = conv_transpose2d(relu(up1), out=4, k=4, s=2, pad=1);\n    \
        output y = gelu(up2);\n    \
        side = conv_transpose2d(z, out=3, k=2, s=3, pad=1, dilation=2);\n    \
        output x = side + r;\n}\n";
    let m = with_data("decoder", from_source("decoder.bb", source), 2, 7);
    let optimized = optimized_for(&m.graph, bbc::Target::Gpu);
    let kernels = bbc::compiler::stats::stats(&optimized).kernels;
    assert_eq!(
        kernels, 3,
        "one kernel per transposed convolution, with its chain"
    );
    if let Some(gpu) = device() {
        check(&m, Dialect::Wgsl, &|m| {
            let (plan, constants) = plan(m, Dialect::Wgsl);
            Box::new(WgpuExecutor::with_device(gpu, plan, &constants).expect("loads"))
        });
    }
    match cuda_missing() {
        Some(why) => skipped(&format!("no CUDA ({why})")),
        None => {
            check(&m, Dialect::Cuda, &|m| {
                let (plan, constants) = plan(m, Dialect::Cuda);
                bbc::runtime::gpu::open(plan, &constants).expect("loads")
            });
        }
    }
}

/// ELU near 0 on each GPU dialect present, relative to its value (as on the CPU): WGSL's
/// `m` loaded for every GPU dialect this machine can run (WGSL where a Vulkan device is,
/// CUDA where a driver and device are).
fn executors(m: &Model) -> Vec<(Dialect, Box<dyn Executor>)> {
    let mut exes: Vec<(Dialect, Box<dyn Executor>)> = Vec::new();
    if let Some(gpu) = device() {
        let (plan, constants) = plan(m, Dialect::Wgsl);
        let exe = WgpuExecutor::with_device(gpu, plan, &constants).expect("loads");
        exes.push((Dialect::Wgsl, Box::new(exe)));
    }
    match cuda_missing() {
        Some(why) => skipped(&format!("no CUDA ({why})")),
        None => {
            let (plan, constants) = plan(m, Dialect::Cuda);
            exes.push((
                Dialect::Cuda,
                bbc::runtime::gpu::open(plan, &constants).expect("loads"),
            ));
        }
    }
    exes
}

/// NaN propagates through max and min (`relu`, `maximum`, a `max` reduction, max pooling)
/// and through the clamped approximations (`tanh`, `elu`, `relu6`) on the GPUs as in the
/// interpreter. WGSL lets a driver assume no float is NaN, and lavapipe folded the helpers'
/// `a != a` away (`relu(NaN)` was 0, `tanh(NaN)` −1).
#[test]
fn nan_propagates_on_gpus() {
    let xs = [
        f32::NAN,
        2.0,
        -1.0,
        f32::INFINITY,
        -3.0,
        0.5,
        f32::NAN,
        -0.25,
    ];
    let source = "bb 0.1;\nmodel m() {\n    input x: f32[1, 2, 2, 2];\n    \
                  output r = relu(x);\n    output r6 = relu6(x);\n    \
                  output mx = maximum(x, 0.0);\n    output mn = minimum(x, 0.0);\n    \
                  output t = tanh(x);\n    output e = elu(x);\n    \
                  output s = max(x, axes=[1]);\n    output p = max_pool2d(x, k=2);\n}\n";
    let x = bbc::runtime::Tensor::from_shape_vec(vec![1, 2, 2, 2], xs.to_vec()).expect("sized");
    let m = Model {
        label: "nan".into(),
        weights: BTreeMap::new(),
        inputs: HashMap::from([("x".to_string(), x)]),
        graph: from_source("nan.bb", source),
    };
    let want = interp::run(&m.graph, &m.inputs, &m.weights).expect("interprets");
    for (dialect, mut exe) in executors(&m) {
        let got = exe.run(&m.inputs).expect("runs");
        for (name, w) in &want {
            for (i, (&g, &w)) in got[name].iter().zip(w.iter()).enumerate() {
                assert!(
                    g.is_nan() == w.is_nan() && (w.is_nan() || g == w || (g - w).abs() <= 1e-6),
                    "{dialect:?} {name}[{i}]: {g}, the interpreter {w}"
                );
            }
        }
    }
}

/// Reductions over a strided axis (a softmax over axis 0, a `layer_norm2d` over the
/// channels of each pixel, a global pool of a large map) share a workgroup per output
/// instead of looping in one invocation: on lavapipe an invocation's loops stop being right
/// past about 65,535 iterations, which a softmax over 21,845 rows of axis 0 reaches.
#[test]
fn long_strided_reductions_match_the_interpreter() {
    let source = "bb 0.1;\nmodel m() {\n    input a: f32[21845, 2];\n    \
                  input b: f32[1, 70001, 1, 2];\n    input c: f32[1, 2, 254, 257];\n    \
                  output sa = softmax(a, axis=0);\n    \
                  output nb = layer_norm2d(b, affine=false);\n    \
                  output pc = adaptive_avg_pool2d(c, size=(1, 1));\n}\n";
    let m = with_data("long", from_source("long.bb", source), 1, 2);
    let want = interp::run(&m.graph, &m.inputs, &m.weights).expect("interprets");
    for (dialect, mut exe) in executors(&m) {
        let got = exe.run(&m.inputs).expect("runs");
        let dev = deviation(&got, &want);
        assert!(dev <= TOLERANCE, "{dialect:?}: deviation {dev:e}");
    }
}

/// `bb_expm1`, the CPU code generator's `expm1` step for step, and CUDA's `expm1f`, where
/// `exp(x) − 1` left 2e-4 relative error at −2.5e-4 and gave 0 for |x| < 3e-8.
#[test]
fn elu_is_accurate_near_zero_on_gpus() {
    let xs = [
        1e-8, -1e-8, -6e-8, -1e-6, -2.5e-4, -1e-3, -0.01, -0.3, -0.34, -0.35, -0.7, -1.0, -3.0,
        -20.0, -100.0, 2.0,
    ];
    let source = "bb 0.1;\nmodel m() {\n    input x: f32[16];\n    \
                  output ya = elu(x);\n    output yb = elu(x, alpha=0.5);\n}\n";
    let program = bbc::compiler::elab::Program::from_source("elu.bb", source)
        .unwrap_or_else(|e| panic!("{}", e.render()));
    let graph = program
        .elaborate(&bbc::compiler::elab::Options::default())
        .unwrap_or_else(|d| panic!("{d:?}"))
        .graph;
    let x = bbc::runtime::Tensor::from_shape_vec(vec![xs.len()], xs.to_vec()).expect("sized");
    let m = Model {
        label: "elu".into(),
        weights: BTreeMap::new(),
        inputs: HashMap::from([("x".to_string(), x)]),
        graph,
    };
    let want = interp::run(&m.graph, &m.inputs, &m.weights).expect("interprets");
    for (dialect, mut exe) in executors(&m) {
        let got = exe.run(&m.inputs).expect("runs");
        for name in ["ya", "yb"] {
            for ((&x, &g), &w) in xs.iter().zip(&got[name]).zip(&want[name]) {
                let ok = (g - w).abs() <= 1e-6 * w.abs();
                assert!(
                    ok,
                    "{dialect:?} {name}: elu({x:e}) = {g:e}, the interpreter {w:e}"
                );
            }
        }
    }
}

fn bbc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bbc"))
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime_dir())
        .output()
        .expect("bbc runs")
}

/// A private 0700 folder, so Mesa's window-system layer does not complain on stderr.
fn runtime_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("xdg");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        dir
    })
    .clone()
}

/// A fresh, empty folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bbc-gpu-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The spec and model the command-line tests use: small, with a product and a reduction.
const SPEC: &str = "specs/convnext.bb";
const MODEL: &str = "convnext_test";

#[test]
fn compiled_program_loads_and_runs_from_its_folder() {
    let root = scratch("compile");
    let dir = root.join("prog");
    let dir_arg = dir.to_str().unwrap();
    let out = bbc(&[
        "compile", SPEC, "--model", MODEL, "--target", "gpu", "-o", dir_arg,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for file in ["plan.json", "weights.safetensors", "README.txt"] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let readme = std::fs::read_to_string(dir.join("README.txt")).unwrap();
    assert!(readme.contains("load_dir"), "{readme}");
    let again = bbc(&[
        "compile", SPEC, "--model", MODEL, "--target", "gpu", "-o", dir_arg,
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));

    let (plan, constants) = load_dir(&dir).unwrap();
    assert!(plan.kernels.iter().all(|k| !k.source.is_empty()));
    assert!(std::fs::read_dir(dir.join("kernels")).unwrap().count() == plan.kernels.len());
    let Some(gpu) = device() else { return };
    // `bbc compile` initialises weights from seed 0, as `init_weights` does.
    let m = seeded(SPEC, MODEL, &[]);
    let weights = bbc::compiler::weights::init_weights(&m.graph, 0);
    let reference = interp::run(&m.graph, &m.inputs, &weights).unwrap();
    let mut exe = WgpuExecutor::with_device(gpu, plan, &constants).unwrap();
    let got = exe.run(&m.inputs).unwrap();
    let dev = deviation(&got, &reference);
    assert!(dev <= TOLERANCE, "loaded program deviates by {dev:e}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn run_on_the_gpu_target_matches_the_interpreter() {
    if device().is_none() {
        return;
    }
    let root = scratch("run");
    let run = |engine: &[&str], file: &str| {
        let path = root.join(file);
        let mut args = vec![
            "run",
            SPEC,
            "--model",
            MODEL,
            "--output",
            path.to_str().unwrap(),
        ];
        args.extend(engine);
        let out = bbc(&args);
        assert!(out.status.success(), "{engine:?}: {}", stderr(&out));
        read_npy(&path).unwrap()
    };
    let gpu = run(&["--target", "gpu"], "gpu.npy");
    let interp = run(&["--interp"], "interp.npy");
    let as_map = |t| std::collections::BTreeMap::from([("output".to_string(), t)]);
    let dev = deviation(&as_map(gpu), &as_map(interp));
    assert!(dev <= TOLERANCE, "bbc run --target gpu deviates by {dev:e}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn cuda_without_a_driver_is_a_clear_error() {
    let Err(why) = bbc::runtime::gpu::cuda::check_libraries().map_err(|e| e.to_string()) else {
        skipped("a CUDA driver is present; the error path cannot be shown here");
        return;
    };
    assert!(why.contains("not found"), "{why}");
    let out = bbc(&["run", SPEC, "--model", MODEL, "--target", "cuda"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("error: CUDA driver not found"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn options_that_do_not_fit_the_target_are_refused() {
    let root = scratch("refused");
    let dir = root.join("prog");
    let dir_arg = dir.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "run",
                SPEC,
                "--model",
                MODEL,
                "--target",
                "gpu",
                "--threads",
                "2",
            ],
            "--threads is an option of the cpu target",
        ),
        (
            &[
                "bench",
                SPEC,
                "--model",
                MODEL,
                "--target",
                "cuda",
                "--threads",
                "2",
            ],
            "--threads is an option of the cpu target",
        ),
        (
            &[
                "compile", SPEC, "--model", MODEL, "--target", "gpu", "--symbol", "m", "-o",
                dir_arg,
            ],
            "--symbol applies to --target cpu only",
        ),
        (
            &[
                "compile",
                SPEC,
                "--model",
                MODEL,
                "--target",
                "gpu",
                "--tensor-cores",
                "-o",
                dir_arg,
            ],
            "--tensor-cores applies to --target cuda only",
        ),
    ];
    for (args, message) in cases {
        let out = bbc(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
    assert!(!dir.exists(), "a refused compile writes nothing");
    // A folder holding something else is never replaced, even with --force.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let out = bbc(&[
        "compile", SPEC, "--model", MODEL, "--target", "gpu", "--force", "-o", dir_arg,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("holds no compiled program"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "mine"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// A plan file from the future is refused with its version, not misread.
#[test]
fn a_plan_of_another_format_is_refused() {
    let root = scratch("format");
    let dir = root.join("prog");
    let out = bbc(&[
        "compile",
        SPEC,
        "--model",
        MODEL,
        "--target",
        "cuda",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir
        .join("kernels")
        .read_dir()
        .unwrap()
        .all(|e| { e.unwrap().path().extension().is_some_and(|x| x == "cu") }));
    let path = dir.join("plan.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"format\": 1", "\"format\": 99", 1)).unwrap();
    let err = load_dir(Path::new(&dir)).unwrap_err().to_string();
    assert!(err.contains("unsupported plan format 99"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}
