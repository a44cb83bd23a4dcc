//! Ahead-of-time CPU compilation end to end: `bbc compile --target cpu` writes an object
//! file; a C program (`tests/aot/main.c`) links it with the runtime library alone
//! (`libbbcrt.a`, the `bbc-rt` crate) and runs it; its outputs must equal those of
//! `bbc run --target cpu` (the JIT) on the same weights and input. Weights that do not
//! match the object, and models with nodes only the JIT can run, are errors, not crashes.
//!
//! The library is built by `cargo build -p bbc-rt` into this test's own target folder and
//! profile (quick when it is up to date), so it never carries the GPU features the rest of
//! the workspace enables. Without a C compiler (`cc`, or `$CC`) the tests say so and pass.

use bbc::runtime::{read_npy, write_npy, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Models compiled ahead of time and checked against the JIT, with their size arguments:
/// ConvNeXt with 1x1-conv MLPs (convolutions, banded depthwise + LayerNorm groups, the
/// head's GEMM, loop kernels) first, then folded BatchNorm, depthwise groups run as two
/// steps, attention, two inputs, three outputs, wavelet-folded filters, transposed
/// convolutions and concatenations written in place (RDN's dense blocks).
const MODELS: [(&str, &str, &[&str]); 9] = [
    (
        "specs/convnext.bb",
        "convnext_test",
        &["--dim", "H=32", "--dim", "W=32"],
    ),
    (
        "specs/resnet.bb",
        "resnet_test",
        &["--dim", "H=64", "--dim", "W=64"],
    ),
    ("specs/efficientnet.bb", "efficientnet_test", &[]),
    ("specs/tnt.bb", "tnt_test", &[]),
    ("specs/deep_sets.bb", "deep_sets_masked", &[]),
    ("specs/fff.bb", "fff_bifpn_test", &[]),
    ("specs/wavelet.bb", "wavecnet_test", &[]),
    ("tests/aot/decoder.bb", "decoder", &[]),
    (
        "specs/rdn.bb",
        "rdn_test",
        &["--arg", "C=4", "--arg", "G=32", "--arg", "G0=32"],
    ),
];
/// The descriptor symbol `tests/aot/main.c` refers to.
const SYMBOL: &str = "aot_test_model";
const THREADS: &str = "2";
const SEED: &str = "3";

fn root_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bbc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bbc"))
        .args(args)
        .current_dir(root_dir())
        .output()
        .expect("bbc runs")
}

/// `bbc compile SPEC --target cpu EXTRA... -o OUT`.
fn compile_cpu(spec: &Path, out: &Path, extra: &[&str]) -> Output {
    let (spec, out) = (
        spec.to_str().expect("UTF-8 path"),
        out.to_str().expect("UTF-8 path"),
    );
    bbc(&[
        &["compile", spec, "--target", "cpu"][..],
        extra,
        &["-o", out],
    ]
    .concat())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("aot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp folder");
    dir
}

/// `dir/tiny.bb`: one ReLU over a 2x3 input, for tests about the folder rather than the model.
fn tiny_spec(dir: &Path) -> PathBuf {
    let spec = dir.join("tiny.bb");
    std::fs::write(
        &spec,
        "bb 0.1;\nmodel tiny() {\n    input x: f32[2, 3];\n    output y = relu(x);\n}\n",
    )
    .expect("spec written");
    spec
}

/// The C compiler, or `None` when there is none (`$CC`, else `cc`).
fn c_compiler() -> Option<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let works = Command::new(&cc)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        eprintln!("skipped: no C compiler (`{cc}`) to build the test program with");
    }
    works.then_some(cc)
}

/// `libbbcrt.a` for this test's target folder and profile, built once.
fn runtime_library() -> &'static Path {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(build_runtime_library)
}

/// Builds `libbbcrt.a` into `target/<profile>/`, two levels above the test executable in
/// `target/<profile>/deps/`.
fn build_runtime_library() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("a target folder");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "bbc-rt", "--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(root_dir())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build -p bbc-rt failed");
    let lib = profile_dir.join("libbbcrt.a");
    assert!(lib.is_file(), "{} was not built", lib.display());
    lib
}

/// A compiled model and the C program linked with it.
struct Program {
    dir: PathBuf,
    main: PathBuf,
    /// `bbc compile`'s summary.
    note: String,
}

/// An input or output as the C program describes it.
struct Io {
    name: String,
    shape: Vec<usize>,
}

/// Compiles `model` of `spec` ahead of time into a fresh folder under `root` and links
/// `tests/aot/main.c` with it and `lib` using `cc`.
fn build_program(
    cc: &str,
    lib: &Path,
    root: &Path,
    spec: &str,
    model: &str,
    dims: &[&str],
) -> Program {
    let dir = root.join(model);
    let out = bbc(&[
        &["compile", spec, "--model", model][..],
        dims,
        &["--target", "cpu", "--symbol", SYMBOL, "--seed", SEED, "-o"],
        &[dir.to_str().expect("UTF-8 path")],
    ]
    .concat());
    assert!(out.status.success(), "{model}: {}", text(&out.stderr));
    for file in ["model.o", "model.h", "bbcrt.h", "weights.bin", "README.txt"] {
        assert!(dir.join(file).is_file(), "{model}: {file} missing");
    }
    let main = dir.join("main");
    let built = Command::new(cc)
        .args(["-std=c99", "-O1", "-Wall", "-Werror", "-I"])
        .arg(&dir)
        .arg(root_dir().join("tests/aot/main.c"))
        .arg(dir.join("model.o"))
        .arg(lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&main)
        .output()
        .expect("the C compiler runs");
    assert!(
        built.status.success(),
        "{model}: compiling main.c failed:\n{}",
        text(&built.stderr)
    );
    Program {
        dir,
        main,
        note: text(&out.stderr),
    }
}

/// ConvNeXt's program, which the error tests share, built once; `None` without a C
/// compiler.
fn convnext() -> Option<&'static Program> {
    static PROGRAM: OnceLock<Option<Program>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let cc = c_compiler()?;
            let (spec, model, dims) = MODELS[0];
            let root = scratch("errors");
            Some(build_program(
                &cc,
                runtime_library(),
                &root,
                spec,
                model,
                dims,
            ))
        })
        .as_ref()
}

/// Deterministic values in [-1, 1) for input `k`.
fn input_values(k: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i + 31 * k) * 7919) % 2003) as f32 / 1001.0 - 1.0)
        .collect()
}

impl Program {
    /// Runs the C program with `args` after the weights file.
    fn main(&self, weights: &Path, args: &[&Path]) -> Output {
        Command::new(&self.main)
            .arg(weights)
            .args(args)
            .arg(THREADS)
            .output()
            .expect("the program runs")
    }

    fn weights(&self) -> PathBuf {
        self.dir.join("weights.bin")
    }

    /// The inputs and outputs, as the program reads them from the object.
    fn describe(&self) -> (Vec<Io>, Vec<Io>) {
        let out = Command::new(&self.main)
            .arg(self.weights())
            .output()
            .expect("the program runs");
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        let line = regex::Regex::new(r"(?m)^(input|output) (\S+) \[([0-9, ]*)\]$").expect("regex");
        let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
        for caps in line.captures_iter(&stdout) {
            let io = Io {
                name: caps[2].to_string(),
                shape: caps[3]
                    .split(", ")
                    .map(|d| d.parse().expect("a size"))
                    .collect(),
            };
            match &caps[1] {
                "input" => inputs.push(io),
                _ => outputs.push(io),
            }
        }
        (inputs, outputs)
    }

    /// Writes every input, in order, as raw little-endian f32 to `input.bin`.
    fn write_inputs(&self, inputs: &[(Io, Vec<f32>)]) -> PathBuf {
        let path = self.dir.join("input.bin");
        let bytes: Vec<u8> = inputs
            .iter()
            .flat_map(|(_, v)| v.iter().flat_map(|x| x.to_le_bytes()))
            .collect();
        std::fs::write(&path, bytes).expect("input written");
        path
    }
}

/// For every model of [`MODELS`], the C program linked with its object file and the
/// runtime library alone computes what the JIT (`bbc run --target cpu`) computes on the
/// same weights and inputs, to 1e-5 of each output's scale (the same kernels: expected
/// identical).
#[test]
fn c_programs_match_the_jit() {
    let Some(cc) = c_compiler() else { return };
    let lib = runtime_library();
    let root = scratch("models");
    let counts =
        regex::Regex::new(r"(\d+) loop, (\d+) conv \((\d+) banded depthwise groups\), (\d+) gemm")
            .expect("regex");
    for (index, (spec, model, dims)) in MODELS.into_iter().enumerate() {
        let p = build_program(&cc, lib, &root, spec, model, dims);
        if index == 0 {
            // The first model exercises every kind of step the object holds.
            let caps = counts
                .captures(&p.note)
                .expect("step counts in the summary");
            for (i, kind) in ["loop", "conv", "banded depthwise", "gemm"]
                .iter()
                .enumerate()
            {
                let n: usize = caps[i + 1].parse().expect("a count");
                assert!(n > 0, "{model}: no {kind} step: {}", p.note);
            }
        }
        let (inputs, outputs) = p.describe();
        assert!(!inputs.is_empty() && !outputs.is_empty(), "{model}");
        let inputs: Vec<(Io, Vec<f32>)> = inputs
            .into_iter()
            .enumerate()
            .map(|(k, io)| {
                let values = input_values(k, io.shape.iter().product());
                (io, values)
            })
            .collect();
        let input_bin = p.write_inputs(&inputs);
        let c_out = p.dir.join("c_output.bin");
        let out = p.main(&p.weights(), &[&input_bin, &c_out]);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{model}: {stdout}{}",
            text(&out.stderr)
        );
        assert!(stdout.contains("short input refused"), "{model}: {stdout}");
        let c_values: Vec<f32> = std::fs::read(&c_out)
            .expect("the program wrote its outputs")
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();

        let mut args: Vec<String> = ["run", spec, "--model", model]
            .iter()
            .chain(dims)
            .map(|a| a.to_string())
            .collect();
        args.extend(["--target", "cpu", "--seed", SEED, "--threads", THREADS].map(String::from));
        for (io, values) in &inputs {
            let path = p.dir.join(format!("input_{}.npy", io.name));
            let x = Tensor::from_shape_vec(io.shape.as_slice(), values.clone()).expect("sized");
            write_npy(&path, &x).expect("input written");
            args.push("--input".into());
            args.push(format!("{}={}", io.name, path.display()));
        }
        let jit_dir = p.dir.join("jit");
        args.push("--output-dir".into());
        args.push(jit_dir.display().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = bbc(&args);
        assert!(out.status.success(), "{model}: {}", text(&out.stderr));

        let mut at = 0;
        for io in &outputs {
            let jit = read_npy(jit_dir.join(format!("{}.npy", io.name))).expect("JIT output");
            assert_eq!(jit.shape(), io.shape.as_slice(), "{model}: {}", io.name);
            let got = &c_values[at..at + jit.len()];
            at += jit.len();
            let scale = jit.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let worst = jit
                .iter()
                .zip(got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-5 * scale,
                "{model}: `{}` differs from the JIT's by {worst} (scale {scale})",
                io.name
            );
            if worst > 0.0 {
                eprintln!(
                    "note: {model}: `{}` differs by {worst} (scale {scale})",
                    io.name
                );
            }
        }
        assert_eq!(at, c_values.len(), "{model}: every output compared");
    }
    std::fs::remove_dir_all(&root).expect("cleaned up");
}

/// Truncated, corrupt and missing weights files are reported by the program, which exits
/// cleanly.
#[test]
fn weights_that_do_not_match_are_errors() {
    let Some(p) = convnext() else { return };
    let good = std::fs::read(p.weights()).expect("weights");
    let mut corrupt = good.clone();
    corrupt[good.len() / 2] ^= 0x40;
    let cases: [(&str, Option<&[u8]>, &str); 3] = [
        ("truncated.bin", Some(&good[..good.len() - 8]), "truncated"),
        ("corrupt.bin", Some(&corrupt), "corrupt"),
        ("missing.bin", None, "cannot open"),
    ];
    let (inputs, _) = p.describe();
    let inputs: Vec<(Io, Vec<f32>)> = inputs
        .into_iter()
        .map(|io| {
            let values = input_values(0, io.shape.iter().product());
            (io, values)
        })
        .collect();
    let input = p.write_inputs(&inputs);
    for (name, bytes, message) in cases {
        let path = p.dir.join(name);
        if let Some(bytes) = bytes {
            std::fs::write(&path, bytes).expect("written");
        }
        let out = p.main(&path, &[&input, &p.dir.join("unused.bin")]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains("load: weights"), "{name}: {stderr}");
        assert!(stderr.contains(message), "{name}: {stderr}");
    }
    // A folder is not taken for a truncated file.
    let folder = p.dir.join("a-folder");
    std::fs::create_dir_all(&folder).expect("a folder");
    let out = p.main(&folder, &[&input, &p.dir.join("unused.bin")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("it is a folder, not a weights file") && !stderr.contains("truncated"),
        "{stderr}"
    );
}

/// A node without a planned CPU kernel (`uiqi`, which the JIT runs as host code: the op
/// table's reference) cannot go into an object file: compiling is refused with the node
/// listed, and nothing is written.
#[test]
fn models_with_reference_fallbacks_are_refused() {
    let dir = scratch("fallback");
    let spec = dir.join("score.bb");
    std::fs::write(
        &spec,
        "bb 0.1;\nmodel score() {\n    input a: f32[1, 3, 16, 16];\n    \
         input b: f32[1, 3, 16, 16];\n    output q = uiqi(a, b);\n}\n",
    )
    .expect("spec written");
    let out_dir = dir.join("out");
    let out = compile_cpu(&spec, &out_dir, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no CPU kernel"), "{stderr}");
    assert!(stderr.contains("(uiqi)"), "{stderr}");
    assert!(!out_dir.exists(), "a refused compile writes nothing");
    let out = compile_cpu(&spec, &out_dir, &["--symbol", "9lives"]);
    assert!(text(&out.stderr).contains("is not a C identifier"));
    std::fs::remove_dir_all(&dir).expect("cleaned up");
}

/// A folder holding a compiled program is replaced only with `--force`, whichever target
/// wrote it.
#[test]
fn an_existing_program_is_replaced_only_with_force() {
    let dir = scratch("force");
    let spec = tiny_spec(&dir);
    let out_dir = dir.join("out");
    let compile =
        |force: bool| compile_cpu(&spec, &out_dir, if force { &["--force"] } else { &[] });
    assert!(compile(false).status.success());
    let again = compile(false);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );
    let forced = compile(true);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    let header = std::fs::read_to_string(out_dir.join("model.h")).expect("model.h");
    assert!(
        header.contains("extern const bbcrt_descriptor bbc_model_tiny;"),
        "{header}"
    );
    // A destination whose parent folder is missing names that folder.
    let orphan = dir.join("missing").join("out");
    let refused = compile_cpu(&spec, &orphan, &[]);
    assert_eq!(refused.status.code(), Some(1));
    let message = text(&refused.stderr);
    assert!(
        message.contains("does not exist") && message.contains("missing`"),
        "{message}"
    );
    std::fs::remove_dir_all(&dir).expect("cleaned up");
}

/// What a write killed between its two renames leaves (the previous program moved aside,
/// its process gone) never blocks a later one: it is put back where no program took its
/// place, and removed where one did.
#[test]
fn a_program_an_interrupted_write_moved_aside_is_recovered() {
    let dir = scratch("aside");
    let spec = tiny_spec(&dir);
    let out_dir = dir.join("out");
    // No process has this id (Linux's pid_max is at most 2^22).
    let aside = dir.join(".out.old-4294967294");
    let leave_aside = |marker: &str| {
        std::fs::create_dir(&aside).expect("a folder moved aside");
        std::fs::write(aside.join("model.o"), marker).expect("its program");
    };
    assert!(compile_cpu(&spec, &out_dir, &[]).status.success());
    leave_aside("previous");
    let forced = compile_cpu(&spec, &out_dir, &["--force"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert!(!aside.exists(), "the replaced program was left aside");
    // Killed before the new program took its place: the previous one comes back.
    std::fs::remove_dir_all(&out_dir).expect("removed");
    leave_aside("previous");
    let refused = compile_cpu(&spec, &out_dir, &[]);
    assert!(
        text(&refused.stderr).contains("--force"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("model.o"))
            .ok()
            .as_deref(),
        Some("previous")
    );
    std::fs::remove_dir_all(&dir).expect("cleaned up");
}

/// `-o LINK` writes the folder the link points to and keeps the link, as the file writers
/// do; a link to nothing is refused. Errors name the destination given, never the
/// temporary folder beside it.
#[test]
fn program_folders_are_written_through_links_and_named_as_given() {
    let dir = scratch("links");
    let spec = tiny_spec(&dir);
    let real = dir.join("real");
    let link = dir.join("link");
    std::fs::create_dir(&real).expect("a folder");
    std::os::unix::fs::symlink(&real, &link).expect("a link to it");
    for extra in [&[][..], &["--force"]] {
        let out = compile_cpu(&spec, &link, extra);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let meta = std::fs::symlink_metadata(&link).expect("the link");
        assert!(meta.file_type().is_symlink(), "the link was replaced");
        assert!(
            real.join("model.o").is_file(),
            "the program is not where the link points"
        );
    }
    let dangling = dir.join("dangling");
    std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).expect("a dangling link");
    let out = compile_cpu(&spec, &dangling, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("symbolic link") && stderr.contains("help:"),
        "{stderr}"
    );
    // A folder where nothing can be created (`/proc` takes no new entries).
    if Path::new("/proc/self").exists() {
        let out = compile_cpu(&spec, Path::new("/proc/bbc-program"), &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("cannot write `/proc/bbc-program`") && !stderr.contains(".partial"),
            "{stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).expect("cleaned up");
}
