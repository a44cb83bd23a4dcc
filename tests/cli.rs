//! End-to-end tests of the `bbc` binary on the bundled specs and reference fixtures: every
//! subcommand on every model, checkpoint checks, runs against PyTorch outputs, and the error
//! paths (exit code 1 with a diagnostic, or 2 for usage errors, and never a panic).

mod common;

use bbc::runtime::read_npy;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SPECS: &[&str] = &[
    "specs/convnext.bb",
    "specs/deep_sets.bb",
    "specs/spatial_broadcast_decoder.bb",
];

/// Models cheap enough to run with the interpreter at their default dims.
const TINY: &[(&str, &str)] = &[
    ("specs/convnext.bb", "convnext_test"),
    ("specs/convnext.bb", "convnext_test_linear"),
    ("specs/deep_sets.bb", "deep_sets_sum"),
    ("specs/deep_sets.bb", "deep_sets_mean"),
    ("specs/deep_sets.bb", "deep_sets_masked"),
    ("specs/spatial_broadcast_decoder.bb", "sbd_test"),
];

const FIXTURES: &str = "tests/fixtures/reference";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bbc(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_bbc"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the bbc binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "bbc {args:?} panicked:\n{stderr}"
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `bbc`, requires success, and returns stdout.
fn ok(args: &[&str]) -> String {
    let out = bbc(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "bbc {args:?} failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs `bbc`, requires exit code `code`, and returns stderr.
fn fails(args: &[&str], code: i32) -> String {
    let out = bbc(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "bbc {args:?}: expected exit {code}\nstdout:\n{}\nstderr:\n{}",
        stdout(&out),
        stderr(&out)
    );
    stderr(&out)
}

/// A fresh scratch folder for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("bbc-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    Scratch(dir)
}

fn models(spec: &str) -> Vec<String> {
    ok(&["models", spec])
        .lines()
        .map(|l| l.trim_end_matches("(default)").trim().to_string())
        .collect()
}

fn max_abs_diff(a: &bbc::runtime::Tensor, b: &bbc::runtime::Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .fold(0.0f64, |m, (x, y)| m.max(f64::from((x - y).abs())))
}

#[test]
fn help_is_available_for_every_subcommand() {
    let top = ok(&["--help"]);
    for sub in [
        "check", "ir", "weights", "stats", "graph", "run", "bench", "models",
    ] {
        assert!(top.contains(sub), "`{sub}` missing from --help:\n{top}");
        let help = ok(&[sub, "--help"]);
        assert!(help.contains("Usage: bbc"), "{help}");
    }
    assert!(ok(&["run", "--help"]).contains("reference interpreter"));
    fails(&[], 2);
    fails(&["frobnicate"], 2);
}

#[test]
fn models_lists_every_model_and_marks_the_default() {
    let out = ok(&["models", "specs/convnext.bb"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"convnext_test"), "{out}");
    assert_eq!(lines.iter().filter(|l| l.contains("(default)")).count(), 1);
    assert!(lines.last().is_some_and(|l| l.starts_with("convnext_atto")));
}

#[test]
fn check_weights_stats_ir_graph_succeed_on_every_model() {
    for spec in SPECS {
        let names = models(spec);
        assert!(!names.is_empty(), "{spec} has no models");
        let all = ok(&["check", spec, "--all-models"]);
        assert_eq!(
            all.lines().filter(|l| l.starts_with("ok: ")).count(),
            names.len()
        );
        for m in &names {
            let check = ok(&["check", spec, "--model", m]);
            assert!(check.starts_with(&format!("ok: {m} (")), "{check}");
            let weights = ok(&["weights", spec, "--model", m]);
            assert!(weights.contains(" keys, "), "{weights}");
            let stats = ok(&["stats", spec, "--model", m]);
            assert!(stats.contains("activations (peak)"), "{stats}");
            ok(&["stats", spec, "--model", m, "--depth", "2"]);
            let ir = ok(&["ir", spec, "--model", m]);
            assert!(ir.starts_with(&format!("graph {m} {{")), "{ir}");
            check_dot(&ok(&["graph", spec, "--model", m]));
        }
    }
}

/// Balanced braces, and every edge joins nodes the file defines.
fn check_dot(dot: &str) {
    assert!(dot.trim_start().starts_with("digraph"), "{dot}");
    assert_eq!(dot.matches('{').count(), dot.matches('}').count(), "{dot}");
    assert!(dot.trim_end().ends_with('}'));
    let mut defined = HashSet::new();
    let mut edges = Vec::new();
    for line in dot.lines().map(str::trim) {
        if let Some((a, b)) = line.split_once(" -> ") {
            edges.push((a.to_string(), b.trim_end_matches(';').to_string()));
        } else if let Some((id, _)) = line.split_once(" [label=") {
            defined.insert(id.to_string());
        }
    }
    assert!(!defined.is_empty() && !edges.is_empty(), "{dot}");
    for (a, b) in edges {
        assert!(defined.contains(&a), "edge from undefined `{a}`");
        assert!(defined.contains(&b), "edge to undefined `{b}`");
    }
}

#[test]
fn run_succeeds_on_tiny_models_with_random_weights_and_inputs() {
    let dir = scratch("tiny");
    for (spec, m) in TINY {
        let out_dir = dir.join(m);
        let out_dir = out_dir.to_string_lossy();
        let out = ok(&[
            "run",
            spec,
            "--model",
            m,
            "--interp",
            "--output-dir",
            &out_dir,
        ]);
        let name = out.split(':').next().unwrap_or_default().to_string();
        let y = read_npy(dir.join(m).join(format!("{name}.npy"))).expect("output written");
        assert!(y.iter().all(|v| v.is_finite()), "{m}: {out}");
        assert!(out.contains(" std "), "{out}");
    }
}

/// `--show 0` prints each output's summary line alone, not an empty list.
#[test]
fn run_show_zero_prints_only_the_summaries() {
    let text = ok(&[
        "run",
        "specs/deep_sets.bb",
        "--model",
        "deep_sets_sum",
        "--interp",
        "--show",
        "0",
    ]);
    assert!(
        text.starts_with("y: f32[") && text.lines().count() == 1,
        "{text}"
    );
}

#[test]
fn convnext_atto_has_the_timm_parameter_count() {
    let out = ok(&["weights", "specs/convnext.bb", "--model", "convnext_atto"]);
    let last = out.lines().last().unwrap_or_default();
    assert!(last.starts_with("128 keys"), "{last}");
    assert!(last.contains("3,695,520 parameters"), "{last}");
    assert!(out.contains("stem.0.weight"), "{out}");
    assert!(out.contains("specs/convnext.bb:"), "{out}");
}

#[test]
fn weights_against_checkpoints() {
    let dir = scratch("against");
    let good = common::weights_file("convnext_atto", &dir.0);
    let good = good.to_string_lossy();
    let out = ok(&[
        "weights",
        "specs/convnext.bb",
        "--model",
        "convnext_atto",
        "--against",
        &good,
    ]);
    assert!(
        out.starts_with("ok: ") && out.contains("(128 keys)"),
        "{out}"
    );

    let bad = common::weights_file("convnext_test", &dir.0);
    let bad = bad.to_string_lossy();
    let err = fails(
        &[
            "weights",
            "specs/convnext.bb",
            "--model",
            "convnext_atto",
            "--against",
            &bad,
        ],
        1,
    );
    assert!(err.contains("error[E050"), "{err}");
    assert!(err.contains("specs/convnext.bb:"), "{err}");

    let missing = fails(
        &[
            "weights",
            "specs/convnext.bb",
            "--against",
            "no/such.safetensors",
        ],
        1,
    );
    assert!(missing.contains("E0505"), "{missing}");
}

/// A checkpoint that matches the model key for key but holds NaN, infinite or negative
/// variance values passes `weights --against` with a warning for each tensor.
/// A NumPy array or a PyTorch checkpoint given where a safetensors checkpoint goes is named
/// as what it is, with a hint, rather than read as a nonsense header length.
#[test]
fn checkpoints_of_another_format_are_named() {
    let dir = scratch("other-format");
    let pt = dir.join("model.pt");
    std::fs::write(&pt, b"PK\x03\x04 and the rest of a zip archive").expect("a zip file");
    let npy = format!("{FIXTURES}/deep_sets_sum/x.npy");
    let spec = ["specs/deep_sets.bb", "--model", "deep_sets_sum"];
    for (file, format) in [
        (npy.as_str(), "it is a NumPy .npy array"),
        (&pt.to_string_lossy(), "it is a zip archive"),
    ] {
        for command in [&["weights", "--against"][..], &["run", "--weights"]] {
            let args = [command, &[file], &spec].concat();
            let err = fails(&args, 1);
            assert!(
                err.contains(&format!("not a safetensors file: {format}"))
                    && err.contains("help:")
                    && !err.contains("header length"),
                "bbc {args:?}: {err}"
            );
        }
    }
}

#[test]
fn weights_against_warns_about_poisoned_values() {
    let dir = scratch("poisoned");
    let path = dir.join("w.safetensors");
    let w = path.to_string_lossy();
    let spec = "specs/resnet.bb";
    ok(&["weights", spec, "--model", "resnet_test", "--save", &w]);
    let clean = bbc(&["weights", spec, "--model", "resnet_test", "--against", &w]);
    assert!(!stderr(&clean).contains("warning"), "{}", stderr(&clean));
    let ckpt = bbc::runtime::Checkpoint::open(&path).unwrap();
    let mut tensors: Vec<(String, bbc::runtime::Tensor)> = ckpt
        .entries()
        .iter()
        .map(|e| (e.name.clone(), ckpt.load(&e.name).unwrap()))
        .collect();
    drop(ckpt);
    for (name, t) in &mut tensors {
        match name.as_str() {
            "conv1.weight" => {
                t.as_slice_mut().unwrap()[..2].copy_from_slice(&[f32::NAN, f32::INFINITY])
            }
            "layer1.0.bn1.running_var" => t.as_slice_mut().unwrap()[3] = -0.5,
            _ => {}
        }
    }
    let refs: Vec<(String, &bbc::runtime::Tensor)> =
        tensors.iter().map(|(k, t)| (k.clone(), t)).collect();
    bbc::runtime::save(&path, &refs).unwrap();
    let out = bbc(&["weights", spec, "--model", "resnet_test", "--against", &w]);
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("warning: `conv1.weight` holds 1 NaN and 1 infinite values of"),
        "{err}"
    );
    assert!(
        err.contains("warning: `layer1.0.bn1.running_var` holds 1 negative values of 8"),
        "{err}"
    );
    assert_eq!(err.matches("warning:").count(), 2, "{err}");
    assert!(stdout(&out).starts_with("ok: "), "{}", stdout(&out));
}

#[test]
fn saved_weights_check_and_reproduce_the_seeded_run() {
    let dir = scratch("save");
    let w = dir.join("w.safetensors");
    let w = w.to_string_lossy();
    let spec = "specs/spatial_broadcast_decoder.bb";
    ok(&[
        "weights", spec, "--model", "sbd_test", "--seed", "7", "--save", &w,
    ]);
    ok(&["weights", spec, "--model", "sbd_test", "--against", &w]);
    let a = ok(&["run", spec, "--model", "sbd_test", "--seed", "7"]);
    let b = ok(&[
        "run",
        spec,
        "--model",
        "sbd_test",
        "--seed",
        "7",
        "--weights",
        &w,
    ]);
    assert_eq!(a, b);
    let c = ok(&["run", spec, "--model", "sbd_test", "--seed", "8"]);
    assert_ne!(a, c);
}

#[test]
fn ir_and_graph_write_files() {
    let dir = scratch("files");
    let ir = dir.join("m.ir");
    let dot = dir.join("m.dot");
    let spec = "specs/deep_sets.bb";
    ok(&["ir", spec, "-o", &ir.to_string_lossy()]);
    ok(&["graph", spec, "-o", &dot.to_string_lossy()]);
    assert_eq!(std::fs::read_to_string(&ir).ok(), Some(ok(&["ir", spec])));
    assert_eq!(
        std::fs::read_to_string(&dot).ok(),
        Some(ok(&["graph", spec]))
    );
}

#[test]
fn run_reproduces_deep_sets_sum() {
    let dir = scratch("deep_sets_sum");
    let y = dir.join("y.npy");
    let case = format!("{FIXTURES}/deep_sets_sum");
    let weights = common::weights_file("deep_sets_sum", &dir.0);
    ok(&[
        "run",
        "specs/deep_sets.bb",
        "--model",
        "deep_sets_sum",
        "--weights",
        &weights.to_string_lossy(),
        "--input",
        &format!("{case}/x.npy"),
        "--output",
        &y.to_string_lossy(),
    ]);
    let actual = read_npy(&y).expect("written");
    let expected = read_npy(root().join(&case).join("y.npy")).expect("fixture");
    assert!(max_abs_diff(&actual, &expected) <= 1e-5);
}

#[test]
fn run_reproduces_every_reference_fixture() {
    let dir = scratch("fixtures");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root().join(FIXTURES))
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("case.json").exists())
        .collect();
    cases.sort();
    assert!(!cases.is_empty());
    for case in cases {
        let text = std::fs::read_to_string(case.join("case.json")).expect("case.json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let name = case
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let mut args: Vec<String> = vec![
            "run".into(),
            v["spec"].as_str().expect("spec").into(),
            "--model".into(),
            v["model"].as_str().expect("model").into(),
            "--weights".into(),
            common::weights_file(&name, &dir.0).to_string_lossy().into(),
            "--output-dir".into(),
            dir.join(&name).to_string_lossy().into(),
        ];
        if let Some(dims) = v["dims"].as_object() {
            for (k, n) in dims {
                args.push("--dim".into());
                args.push(format!("{k}={n}"));
            }
        }
        for i in v["inputs"].as_array().expect("inputs") {
            let i = i.as_str().expect("input name");
            args.push("--input".into());
            args.push(format!("{i}={}", case.join(format!("{i}.npy")).display()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&args);
        let tol = v["tolerance"].as_f64().expect("tolerance");
        for o in v["outputs"].as_array().expect("outputs") {
            let o = o.as_str().expect("output name");
            let expected = read_npy(case.join(format!("{o}.npy"))).expect("fixture");
            let actual = read_npy(dir.join(&name).join(format!("{o}.npy"))).expect("written");
            let scale = expected
                .iter()
                .fold(1.0f64, |m, v| m.max(f64::from(v.abs())));
            let err = max_abs_diff(&actual, &expected);
            assert!(err <= tol * scale, "{name}/{o}: error {err:e}");
        }
    }
}

#[test]
fn user_errors_exit_1_with_a_diagnostic() {
    let err = fails(&["check", "specs/no_such_spec.bb"], 1);
    assert!(
        err.contains("error[E0204]") && err.contains("no_such_spec.bb"),
        "{err}"
    );

    let dir = scratch("errors");
    let bad = dir.join("bad.bb");
    std::fs::write(&bad, "bb 0.1;\nmodel m( {\n").expect("write");
    let err = fails(&["check", &bad.to_string_lossy()], 1);
    assert!(err.contains("error[E01"), "{err}");
    assert!(err.contains("model m( {"), "the snippet is shown: {err}");

    let err = fails(
        &["check", "specs/deep_sets.bb", "--model", "deep_set_sum"],
        1,
    );
    assert!(
        err.contains("E0206") && err.contains("did you mean `deep_sets_sum`"),
        "{err}"
    );

    let err = fails(&["check", "specs/deep_sets.bb", "--dim", "Q=3"], 1);
    assert!(err.contains("E0207"), "{err}");
}

#[test]
fn bad_dims_are_usage_errors() {
    for dim in ["B", "B=x", "=3", "B=1.5"] {
        let err = fails(&["check", "specs/deep_sets.bb", "--dim", dim], 2);
        assert!(err.contains("--dim"), "{err}");
    }
    // An integer too large is out of range, not "not an integer".
    let err = fails(
        &[
            "check",
            "specs/deep_sets.bb",
            "--dim",
            "B=99999999999999999999",
        ],
        2,
    );
    assert!(
        err.contains("out of range") && err.contains("1..=9223372036854775807"),
        "{err}"
    );
    fails(&["stats", "specs/deep_sets.bb", "--depth", "0"], 2);
    // An explicit pass list and a level would leave one of them ignored.
    fails(
        &["ir", "specs/deep_sets.bb", "--passes", "dce", "-O", "2"],
        2,
    );
    // Run counts are bounded (each run's time is kept).
    for (flag, k) in [("--runs", "18446744073709551614"), ("--warmup", "1000001")] {
        let err = fails(&["bench", "specs/deep_sets.bb", flag, k], 2);
        assert!(err.contains(flag) && err.contains("1000000"), "{err}");
    }
    fails(
        &[
            "check",
            "specs/deep_sets.bb",
            "--all-models",
            "--model",
            "x",
        ],
        2,
    );
}

/// An `--output-dir` destination that cannot be written is found before any output is:
/// nothing is left half-written.
/// Every command that writes a file refuses an impossible destination before doing its
/// work, in the same words: a parent that is a file, a parent that does not exist, a
/// destination that is a folder.
#[test]
fn file_destinations_are_checked_alike_by_every_writer() {
    let dir = scratch("destinations");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").expect("a plain file");
    let folder = dir.join("a-folder");
    std::fs::create_dir_all(&folder).expect("a folder");
    let spec = &["specs/deep_sets.bb", "--model", "deep_sets_sum"];
    let writers: [(&[&str], &str, &str); 5] = [
        (&["ir"], "-o", "x.ir"),
        (&["graph"], "-o", "x.dot"),
        (&["run", "--interp"], "-o", "x.npy"),
        (&["weights"], "--save", "x.safetensors"),
        (&["compile", "--target", "cpu"], "-o", "program"),
    ];
    for (command, flag, name) in writers {
        let cases = [
            (
                file.join(name),
                format!("`{}` is not a folder", file.display()),
            ),
            (
                dir.join("missing").join(name),
                format!(
                    "the folder `{}` does not exist (create it first)",
                    dir.join("missing").display()
                ),
            ),
            (folder.clone(), "it is a folder".to_string()),
        ];
        for (path, why) in cases {
            if command[0] == "compile" && path == folder {
                // An empty folder is where a compiled program may go.
                continue;
            }
            let path_text = path.to_string_lossy().into_owned();
            let mut args: Vec<&str> = command.to_vec();
            args.extend_from_slice(spec);
            args.extend_from_slice(&[flag, &path_text]);
            let err = fails(&args, 1);
            let want = format!("cannot write `{}`: {why}", path.display());
            assert!(err.contains(&want), "bbc {args:?}: {err}");
            // Refused before the work: nothing listed or computed first.
            assert_eq!(err.lines().count(), 1, "bbc {args:?}: {err}");
        }
    }
}

/// No command writes over a file it reads (the spec, a checkpoint, an input), through a
/// symbolic link either, nor replaces a folder that holds one; each refusal leaves the
/// file as it was.
#[test]
fn outputs_never_replace_the_inputs_they_are_made_from() {
    let dir = scratch("output-is-input");
    let spec = dir.join("s.bb");
    std::fs::copy("specs/deep_sets.bb", &spec).expect("a copy of the spec");
    let spec_text = std::fs::read(&spec).unwrap();
    let link = dir.join("link.bb");
    std::os::unix::fs::symlink(&spec, &link).expect("a link to the spec");
    let ckpt = dir.join("w.safetensors");
    let x = dir.join("x.npy");
    std::fs::copy(format!("{FIXTURES}/deep_sets_sum/x.npy"), &x).expect("an input");
    let [spec, link, ckpt, x] = [&spec, &link, &ckpt, &x].map(|p| p.to_string_lossy().into_owned());
    let model = ["--model", "deep_sets_sum"];
    ok(&[&["weights", &spec][..], &model, &["--save", &ckpt]].concat());
    let ckpt_bytes = std::fs::read(&ckpt).unwrap();
    let cases: [(Vec<&str>, &str); 7] = [
        (vec!["weights", &spec, "--save", &spec], "it is the spec"),
        (
            vec!["weights", &spec, "--save", &ckpt, "--against", &ckpt],
            "it is the checkpoint --against",
        ),
        (vec!["ir", &spec, "-o", &spec], "it is the spec"),
        (vec!["ir", &spec, "-o", &link], "it is the spec"),
        (vec!["graph", &spec, "-o", &spec], "it is the spec"),
        (
            vec!["run", &spec, "--interp", "-i", &x, "-o", &x],
            "it is input `x`",
        ),
        (
            vec![
                "compile",
                &spec,
                "--target",
                "cpu",
                "-o",
                dir.0.to_str().unwrap(),
                "--force",
            ],
            "it holds the spec",
        ),
    ];
    for (mut args, why) in cases {
        args.extend_from_slice(&model);
        let err = fails(&args, 1);
        assert!(
            err.contains(why) && err.contains("help: write the output to another"),
            "bbc {args:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read(&spec).unwrap(),
        spec_text,
        "the spec was replaced"
    );
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        ckpt_bytes,
        "the checkpoint was replaced"
    );
    assert!(read_npy(&x).is_ok());
    // The output folder's own `<name>.npy` is refused when it is an input.
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    let y = out.join("y.npy");
    std::fs::copy(&x, &y).unwrap();
    let err = fails(
        &[
            &["run", &spec, "--interp", "-i", &y.to_string_lossy()][..],
            &["--output-dir", &out.to_string_lossy()],
            &model,
        ]
        .concat(),
        1,
    );
    assert!(err.contains("it is input `x`"), "{err}");
}

/// A descriptor symbol that would clash when linked (the C entry point, the runtime
/// library's names) is refused before compiling, and nothing is written.
#[test]
fn compile_refuses_symbols_that_cannot_link() {
    let dir = scratch("symbols");
    let out = dir.join("program");
    let out_text = out.to_string_lossy();
    let spec = ["specs/deep_sets.bb", "--model", "deep_sets_sum"];
    for (symbol, owner) in [
        ("main", "the C program's entry point"),
        ("bbcrt_model_load", "the runtime library"),
        ("bbc_powf", "the runtime library's math routines"),
    ] {
        let args = [
            &["compile", "--target", "cpu", "--symbol", symbol, "-o"][..],
            &[&out_text],
            &spec,
        ]
        .concat();
        let err = fails(&args, 1);
        assert!(
            err.contains(&format!("`{symbol}` is taken by {owner}")),
            "{err}"
        );
        assert!(!out.exists(), "a refused symbol wrote {}", out.display());
    }
}

#[test]
fn output_dir_destinations_are_checked_before_writing() {
    let dir = scratch("output-dir");
    let out = dir.join("haar");
    std::fs::create_dir_all(out.join("y.1.npy")).expect("a folder where an output goes");
    let err = fails(
        &[
            "run",
            "specs/wavelet.bb",
            "--model",
            "haar_roundtrip",
            "--output-dir",
            &out.to_string_lossy(),
        ],
        1,
    );
    assert!(
        err.contains("y.1.npy") && err.contains("nothing was written"),
        "{err}"
    );
    assert!(
        !out.join("y.0.npy").exists(),
        "the first output was written"
    );
}

#[test]
fn run_input_errors_exit_1() {
    let x = format!("{FIXTURES}/deep_sets_sum/x.npy");
    let err = fails(
        &[
            "run",
            "specs/convnext.bb",
            "--model",
            "convnext_test",
            "--input",
            &x,
        ],
        1,
    );
    assert!(
        err.contains("[1, 3, 224, 224]") && err.contains("[2, 5, 3]"),
        "{err}"
    );

    // `run deep_sets_sum` with these extra arguments fails with exit code 1.
    let sum_fails = |extra: &[&str]| {
        let args = [
            &["run", "specs/deep_sets.bb", "--model", "deep_sets_sum"],
            extra,
        ]
        .concat();
        fails(&args, 1)
    };
    let err = sum_fails(&["--input", "missing.npy"]);
    assert!(err.contains("missing.npy"), "{err}");
    // One input, named wrongly: the name is reported, not a missing file `y=...`.
    let err = sum_fails(&["--input", &format!("y={x}")]);
    assert!(err.contains("has no input `y` (inputs: x)"), "{err}");
    // Files that are neither .npy nor .png are refused by name, in and out.
    let err = sum_fails(&["--input", "x.jpg"]);
    assert!(err.contains("`.jpg` is not a format"), "{err}");
    let err = sum_fails(&["--output", "y.txt"]);
    assert!(err.contains("`.txt` is not a format"), "{err}");

    // Two inputs: a bare path is ambiguous, an unknown name is reported.
    let err = fails(
        &[
            "run",
            "specs/deep_sets.bb",
            "--model",
            "deep_sets_masked",
            "--input",
            &x,
        ],
        1,
    );
    assert!(err.contains("x, mask"), "{err}");
    let err = fails(
        &[
            "run",
            "specs/deep_sets.bb",
            "--model",
            "deep_sets_masked",
            "--input",
            &format!("y={x}"),
        ],
        1,
    );
    assert!(err.contains("no input `y`"), "{err}");

    let err = fails(
        &[
            "run",
            "specs/deep_sets.bb",
            "--output",
            "no/such/folder/y.npy",
        ],
        1,
    );
    assert!(
        err.contains("the folder `no/such/folder` does not exist"),
        "{err}"
    );

    let scratch_dir = scratch("wrong-weights");
    let w = common::weights_file("convnext_test", &scratch_dir.0);
    let w = w.to_string_lossy();
    let err = fails(
        &[
            "run",
            "specs/deep_sets.bb",
            "--model",
            "deep_sets_sum",
            "--weights",
            &w,
        ],
        1,
    );
    assert!(err.contains("error[E050"), "{err}");
}

#[test]
fn ir_runs_optimisation_pipelines_by_level_and_by_name() {
    let spec = ["ir", "specs/resnet.bb", "--model", "resnet_test"];
    let o0 = ok(&spec);
    assert!(o0.contains("= batch_norm2d("));
    let o2 = ok(&[&spec[..], &["-O2"]].concat());
    assert!(!o2.contains("= batch_norm2d("), "-O2 folds every BatchNorm");
    let skipped = ok(&[&spec[..], &["-O2", "--skip-pass", "fold-batch-norm"]].concat());
    assert!(
        !skipped.contains("= batch_norm2d(") && skipped.contains(".bn_scale"),
        "without folding, -O2 rewrites each BatchNorm as a multiply-add"
    );
    let skipped = ok(&[
        &spec[..],
        &[
            "-O2",
            "--skip-pass",
            "fold-batch-norm",
            "--skip-pass",
            "scale-shift-batch-norm",
        ],
    ]
    .concat());
    assert!(skipped.contains("= batch_norm2d("));
    let after = ok(&[
        &spec[..],
        &["--passes", "fold-batch-norm,dce", "--after", "dce"],
    ]
    .concat());
    assert!(after.starts_with("// after dce\n") && !after.contains("= batch_norm2d("));
    let out = bbc(&[&spec[..], &["-O1", "--time-passes"]].concat());
    assert!(
        out.status.success() && stderr(&out).contains("cse"),
        "{}",
        stderr(&out)
    );
    let err = fails(&[&spec[..], &["--passes", "dcee"]].concat(), 1);
    assert!(
        err.contains("unknown pass `dcee`") && err.contains("did you mean `dce`?"),
        "{err}"
    );
    fails(&[&spec[..], &["-O7"]].concat(), 2);
    let listed = ok(&["ir", "specs/resnet.bb", "--list-passes"]);
    assert!(listed.contains("fold-batch-norm"));
}

/// `--skip-pass` of a pass the pipeline does not run is refused like `--after` of one, on
/// every command that takes it; beside `--passes` it contradicts the list.
#[test]
fn skipping_a_pass_outside_the_pipeline_is_an_error() {
    let spec = ["specs/deep_sets.bb", "--model", "deep_sets_sum"];
    for command in [&["ir"][..], &["stats"], &["run", "--interp"]] {
        let args = [command, &spec[..], &["-O0", "--skip-pass", "cse"]].concat();
        let err = fails(&args, 1);
        assert!(
            err.contains("cannot skip pass `cse`: it is not in the pipeline")
                && err.contains("level 0 runs no passes"),
            "bbc {args:?}: {err}"
        );
    }
    let err = fails(&["ir", spec[0], "-O1", "--skip-pass", "fuse-epilogue"], 1);
    assert!(err.contains("level 1 runs remove-identities"), "{err}");
    let err = fails(&["ir", spec[0], "--passes", "dce", "--skip-pass", "dce"], 2);
    assert!(
        err.contains("--skip-pass") && err.contains("--passes"),
        "{err}"
    );
    ok(&["ir", spec[0], "-O1", "--skip-pass", "cse"]);
}

/// Options that would have no effect are refused rather than ignored: a seed nothing is
/// drawn from, a profile of no kernels, an explanation in place of the IR asked for.
#[test]
fn options_that_would_be_ignored_are_refused() {
    let dir = scratch("ignored");
    let w = dir.join("w.safetensors");
    let w = w.to_string_lossy();
    let spec = ["specs/deep_sets.bb", "--model", "deep_sets_sum"];
    let err = fails(&[&["weights"], &spec[..], &["--seed", "3"]].concat(), 2);
    assert!(err.contains("--save"), "{err}");
    ok(&[&["weights"], &spec[..], &["--seed", "3", "--save", &w]].concat());
    let err = fails(
        &[
            &["compile", "--target", "cpu", "-o"],
            &[
                &dir.join("p").to_string_lossy(),
                "--seed",
                "3",
                "--weights",
                &w,
            ][..],
            &spec[..],
        ]
        .concat(),
        2,
    );
    assert!(err.contains("--seed") && err.contains("--weights"), "{err}");
    let x = format!("{FIXTURES}/deep_sets_sum/x.npy");
    let all_given = [&["run"], &spec[..], &["--weights", &w, "--input", &x]].concat();
    ok(&all_given);
    let err = fails(&[&all_given[..], &["--seed", "4"]].concat(), 1);
    assert!(
        err.contains("--seed 4 is not used") && err.contains("help: leave out --seed"),
        "{err}"
    );
    // A seed still draws the inputs not given, or the weights not given.
    ok(&[&["run"], &spec[..], &["--weights", &w, "--seed", "4"]].concat());
    ok(&[&["run"], &spec[..], &["--input", &x, "--seed", "4"]].concat());
    let err = fails(&[&["bench"], &spec[..], &["--profile", "0"]].concat(), 2);
    assert!(err.contains("--profile"), "{err}");
    for printing in ["--after=dce", "--print-after-all"] {
        let args = [&["ir"], &spec[..], &["-O1", "--explain", printing]].concat();
        let err = fails(&args, 2);
        assert!(err.contains("--explain"), "{err}");
    }
}

#[test]
fn ir_explain_says_why_a_fusion_did_not_fire() {
    let text = ok(&[
        "ir",
        "specs/efficientnet.bb",
        "--model",
        "efficientnet_test",
        "-O2",
        "--explain",
    ]);
    assert!(
        text.contains("fuse-epilogue: `blocks.2.0.conv_dw` stops early"),
        "{text}"
    );
    // The last block's gate stays a multiply: its 4x4 map is smaller than the weight.
    assert!(
        text.contains("fold-channel-scale: `blocks.2.0.se.mul` is not folded")
            && text.contains("costs more than a third of scaling the input"),
        "{text}"
    );
    assert!(
        text.contains("has 2 users") && text.contains("broadcasts"),
        "{text}"
    );
    let stats = ok(&[
        "stats",
        "specs/convnext.bb",
        "--model",
        "convnext_test",
        "-O2",
    ]);
    assert!(
        stats.contains("kernels:") && stats.contains("before optimisation"),
        "{stats}"
    );
    let planned = ok(&[
        "stats",
        "specs/convnext.bb",
        "--model",
        "convnext_test",
        "-O2",
        "--arena",
    ]);
    assert!(
        planned.contains("arena (planned):")
            && planned.contains("weights packed:")
            && planned.contains("(0 fallbacks)"),
        "{planned}"
    );
}

/// `--explain` goes where `-o` says, and at a level without fusion passes says that nothing
/// was looked for rather than that every fusion fired.
#[test]
fn ir_explain_honours_output_and_names_a_pipeline_without_fusion() {
    let dir = scratch("explain");
    let file = dir.join("explain.txt");
    let spec = [
        "ir",
        "specs/deep_sets.bb",
        "--model",
        "deep_sets_sum",
        "--explain",
    ];
    let printed = ok(&[&spec[..], &["-o", &file.to_string_lossy()]].concat());
    assert_eq!(printed, "", "the explanation went to stdout");
    let written = std::fs::read_to_string(&file).expect("--explain -o writes the file");
    assert!(
        written.contains("the -O0 pipeline runs no fusion passes") && written.contains("-O2"),
        "{written}"
    );
    assert!(!written.contains("every fusion"), "{written}");
    let o1 = ok(&[&spec[..], &["-O1"]].concat());
    assert!(
        o1.contains("the -O1 pipeline runs no fusion passes"),
        "{o1}"
    );
    let named = ok(&[&spec[..], &["--passes", "cse,dce"]].concat());
    assert!(named.contains("--passes names no fusion pass"), "{named}");
}

/// `bbc run` compiles for the CPU by default; its outputs match the interpreter's, for any
/// thread count.
#[test]
fn run_on_the_cpu_target_matches_the_interpreter() {
    let dir = scratch("cpu");
    let spec = "specs/convnext.bb";
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let common = ["run", spec, "--model", "convnext_test", "--dim", "H=40"];
    let interp = file("interp.npy");
    ok(&[&common[..], &["--interp", "-o", &interp]].concat());
    for (threads, name) in [("1", "one.npy"), ("3", "three.npy")] {
        let out = file(name);
        let cpu = ["--target", "cpu", "--threads", threads, "-o", &out];
        ok(&[&common[..], &cpu].concat());
    }
    let want = read_npy(dir.join("interp.npy")).expect("written");
    for name in ["one.npy", "three.npy"] {
        let got = read_npy(dir.join(name)).expect("written");
        let scale = want.iter().fold(1.0f64, |m, v| m.max(f64::from(v.abs())));
        assert!(max_abs_diff(&got, &want) <= 2e-5 * scale, "{name}");
    }
    let err = fails(&[&common[..], &["--interp", "--threads", "2"]].concat(), 2);
    assert!(err.contains("--threads"), "{err}");
    fails(&[&common[..], &["--threads", "0"]].concat(), 2);
}

/// `bbc bench` reports latency percentiles, compile stages, GFLOP/s, the arena and the
/// fallbacks, as text and as the JSON object scripts parse.
#[test]
fn bench_reports_latency_compile_stages_and_memory() {
    let common = [
        "bench",
        "specs/convnext.bb",
        "--model",
        "convnext_test",
        "--dim",
        "H=40",
        "--warmup",
        "1",
    ];
    let text = ok(&[
        &common[..],
        &["--runs", "3", "--threads", "2", "--profile", "3"],
    ]
    .concat());
    let kernels = bbc::runtime::kernels::isa::name();
    let resources = format!("on cpu, 2 threads ({kernels} kernels), 3 runs");
    for needle in [
        resources.as_str(),
        "compile",
        "jit",
        "median",
        "p90",
        "GFLOP/s",
        "arena",
        "weights packed",
        "0 reference",
        "slowest kernels",
        "all kernels",
        "(fastest ",
        " MFLOP, ",
    ] {
        assert!(text.contains(needle), "`{needle}` missing:\n{text}");
    }
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        &common[..],
        &["--runs", "3", "--threads", "2", "--json", "--profile", "4"],
    ]
    .concat()))
    .expect("one JSON object");
    let number = |key: &str| {
        json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("`{key}` missing: {json}"))
    };
    assert_eq!(json["model"], "convnext_test");
    assert!(number("min_ms") > 0.0);
    assert!(number("min_ms") <= number("median_ms") && number("median_ms") <= number("p90_ms"));
    assert!(number("gflops") > 0.0 && number("compile_ms") > 0.0);
    assert!(number("peak_arena_bytes") > 0.0);
    assert!(number("packed_weight_bytes") > 0.0);
    // This model's buffers are all small: none is mapped and faulted in when made.
    assert_eq!(number("compile_faulted_bytes"), 0.0);
    assert_eq!(number("compile_faulting_ms"), 0.0);
    assert_eq!(number("fallback_nodes"), 0.0);
    assert_eq!(number("threads"), 2.0);
    assert_eq!(json["cpu_kernels"], kernels);
    // The FMA peak it measured on the same threads, where the CPU has AVX2 and FMA, and
    // the text's share of it.
    match bbc::runtime::peak::fma_peak(1, std::time::Duration::ZERO) {
        Some(_) => {
            assert!(number("fma_peak_gflops") > 0.0, "{json}");
            assert!(text.contains("of this machine's FMA peak"), "{text}");
        }
        None => assert!(json["fma_peak_gflops"].is_null(), "{json}"),
    }
    let stages = json["compile_stages_ms"].as_object().expect("stages");
    for stage in ["lowering", "jit", "weights", "planning"] {
        assert!(stages[stage].as_f64().is_some(), "stage `{stage}`: {json}");
    }
    let total: f64 = stages.values().filter_map(serde_json::Value::as_f64).sum();
    assert!((total - number("compile_ms")).abs() < 1e-6 * total.max(1.0));
    // Every timed run, in order: the statistics are theirs.
    let samples: Vec<f64> = json["samples_ms"]
        .as_array()
        .expect("samples_ms")
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect();
    assert_eq!(samples.len(), 3);
    let least = samples.iter().copied().fold(f64::INFINITY, f64::min);
    assert!((least - number("min_ms")).abs() < 1e-9, "{json}");
    // `--profile` in JSON: the four slowest kernels, slowest first, each fastest run no
    // longer than its mean, and all of them together no longer than the slowest run.
    let profile = &json["profile"];
    let slowest = profile["slowest"].as_array().expect("profile.slowest");
    assert_eq!(slowest.len(), 4, "{profile}");
    let means: Vec<f64> = slowest
        .iter()
        .map(|k| k["mean_ms"].as_f64().unwrap())
        .collect();
    assert!(means.windows(2).all(|w| w[0] >= w[1]), "{profile}");
    // The products among them carry their FLOPs and, where the peak was measured, the
    // share of it their fastest run reached.
    let rated = slowest
        .iter()
        .filter(|k| k["flops"].as_u64().is_some_and(|f| f > 0));
    assert!(rated.clone().count() > 0, "{profile}");
    for k in rated {
        let gflops = k["fastest_gflops"].as_f64().expect("fastest_gflops");
        let share = &k["fastest_peak_share"];
        match json["fma_peak_gflops"].as_f64() {
            Some(peak) => assert!(
                (share.as_f64().unwrap() - gflops / peak).abs() < 1e-9,
                "{k}"
            ),
            None => assert!(share.is_null(), "{k}"),
        }
    }
    for k in slowest {
        assert!(k["step"].as_str().is_some_and(|s| !s.is_empty()), "{k}");
        assert!(k["kind"].as_str().is_some(), "{k}");
        let fastest = k["fastest_ms"]
            .as_f64()
            .expect("fastest_ms on the cpu target");
        assert!(
            fastest > 0.0 && fastest <= k["mean_ms"].as_f64().unwrap() + 1e-9,
            "{k}"
        );
    }
    let total = profile["total_ms"].as_f64().expect("profile.total_ms");
    let slowest_run = samples.iter().copied().fold(0.0, f64::max);
    assert!(
        total >= means.iter().sum::<f64>() - 1e-9 && total <= slowest_run,
        "{profile}"
    );

    let interp: serde_json::Value =
        serde_json::from_str(&ok(
            &[&common[..], &["--runs", "2", "--interp", "--json"]].concat()
        ))
        .expect("one JSON object");
    assert_eq!(interp["engine"], "interp");
    assert!(interp["median_ms"].as_f64().is_some_and(|m| m > 0.0));
    fails(&[&common[..], &["--runs", "0"]].concat(), 2);
}

/// A model that cannot fit in what the process may still allocate is refused before anything
/// large is allocated. Under `ulimit -v` (as under a container's memory limit) the kernel's
/// `MemAvailable` says nothing of the limit, and the 8 GiB input's allocation had aborted the
/// process (exit 134).
#[cfg(target_os = "linux")]
#[test]
fn models_past_the_address_space_limit_are_refused() {
    let dir = scratch("address-space");
    let spec = dir.join("big.bb");
    let text =
        "bb 0.1;\nmodel m() {\n    input x: f32[1, 1, 46341, 46340];\n    output y = relu(x);\n}\n";
    std::fs::write(&spec, text).expect("spec written");
    for target in [&["--threads", "1"][..], &["--interp"]] {
        let script = format!(
            "ulimit -v 4000000 && exec \"$0\" run \"$1\" {}",
            target.join(" ")
        );
        let out = Command::new("bash")
            .args(["-c", &script, env!("CARGO_BIN_EXE_bbc")])
            .arg(&spec)
            .output()
            .expect("bash runs");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{target:?}: {err}");
        assert!(err.contains("needs about 16.0 GiB"), "{target:?}: {err}");
        assert!(
            err.contains("GiB of memory are available"),
            "{target:?}: {err}"
        );
    }
}
