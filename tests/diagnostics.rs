//! The diagnostics suite: every `tests/diagnostics/*.bb` is a small spec with one realistic
//! mistake, and `NAME.stderr` next to it is exactly what `bbc` must print for it.
//!
//! # Running
//!
//! `cargo test --test diagnostics` checks every case. `BBC_BLESS=1 cargo test --test diagnostics`
//! writes (or overwrites) the `.stderr` files from the current output instead of comparing;
//! read the diff before committing it.
//!
//! # What is checked
//!
//! For each case the harness loads the file (`Program::load` with the real file system, path
//! `tests/diagnostics/NAME.bb` relative to the package root, so locations are stable), elaborates
//! a model and, for weights cases, checks a generated checkpoint (`weights::check_file`). Then:
//! - the pipeline must **fail** (a case that compiles is a test failure);
//! - every diagnostic must carry a code `E0xxx`, and a `┌─ file:line:col` location unless it is a
//!   file-level problem that has no source position (missing import file, unknown `--model` or
//!   `--dim`, a checkpoint key the model does not declare, an unreadable checkpoint);
//! - it must not panic and must finish within [`CASE_TIMEOUT`];
//! - the rendered text (`bbc::render`) must equal `NAME.stderr`, with the temporary checkpoint
//!   path replaced by `$CHECKPOINT`.
//!
//! A `.stderr` without its `.bb` is an error (orphan), and [`suite_covers_every_phase`] requires
//! at least three cases per phase (E01 syntax, E02 resolution, E03 elaboration, E04 shapes,
//! E05 weights) and at least 25 distinct (code, message) pairs.
//!
//! Files in sub-folders (`tests/diagnostics/aux/`) are helpers that cases import; they are not
//! cases themselves.
//!
//! # Directives
//!
//! Lines at the top of a case of the form `# bbc-test: KEY=VALUE` (before any other line)
//! configure it:
//! - `model=NAME` — elaborate this model (`--model NAME`); default: the last model of the file.
//! - `dim=NAME=VALUE` — bind a size parameter (`--dim NAME=VALUE`); may repeat.
//! - `arg=NAME=VALUE` — set a model parameter (`--arg NAME=VALUE`, the value as typed); may
//!   repeat.
//! - `unlocated=CODE` — diagnostics with this code may lack a source location in this case (for
//!   problems with a command-line value, e.g. `--dim H=-32`; or a known gap, said so in the case's
//!   comment). Without it only the file-level codes listed in [`may_lack_location`] may.
//! - `checkpoint-from=MODEL` — elaborate `MODEL` from the same file (same dims), initialise its
//!   weights with `init_weights(&graph, 0)`, save them to a temporary safetensors file, then check
//!   that file against the case's model with `weights::check_file`.
//! - `checkpoint-edit=EDIT` — alter that checkpoint before the check (may repeat, applied in order):
//!   - `dtype:KEY:DT` — store tensor `KEY` with dtype `DT` (`I64`, `F64`, `I32` or `U8`) instead
//!     of F32 (values converted, byte size changes accordingly);
//!   - `truncate:N` — cut the last `N` bytes off the file;
//!   - `header:TEXT` — replace the JSON header by `TEXT` verbatim (length prefix adjusted);
//!   - `prefix:N` — overwrite the 8-byte header length with `N`.
//!
//!   Dtype edits need the file written by hand (8-byte little-endian header length, JSON header,
//!   data) because `runtime::save` only writes F32; without dtype edits `runtime::save` is used.

use bbc::compiler::elab::{Elaborated, FsLoader, Options, Program};
use bbc::compiler::weights;
use bbc::grammar::{Diagnostic, SourceMap};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// The case folder, relative to the package root (the working directory of integration tests).
const DIR: &str = "tests/diagnostics";

/// How long one case may take; a hang is a bug (LANGUAGE.md section 8).
const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// Stable stand-in for the temporary checkpoint path in expected output.
const CHECKPOINT: &str = "$CHECKPOINT";

/// One case's directives.
#[derive(Default, Debug)]
struct Directives {
    model: Option<String>,
    dims: Vec<(String, i64)>,
    args: Vec<(String, String)>,
    checkpoint_from: Option<String>,
    edits: Vec<String>,
    unlocated: Vec<String>,
}

fn parse_directives(name: &str, text: &str) -> Directives {
    let mut d = Directives::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# bbc-test:") else {
            break;
        };
        let (key, value) = rest
            .trim()
            .split_once('=')
            .unwrap_or_else(|| panic!("{name}: directive without `=`: {line}"));
        match key {
            "model" => d.model = Some(value.to_string()),
            "dim" => {
                let (k, v) = value
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{name}: `dim=NAME=VALUE` expected: {line}"));
                let v = v
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: bad dim value: {line}"));
                d.dims.push((k.to_string(), v));
            }
            "arg" => {
                let (k, v) = value
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{name}: `arg=NAME=VALUE` expected: {line}"));
                d.args.push((k.to_string(), v.to_string()));
            }
            "checkpoint-from" => d.checkpoint_from = Some(value.to_string()),
            "checkpoint-edit" => d.edits.push(value.to_string()),
            "unlocated" => d.unlocated.push(value.to_string()),
            other => panic!("{name}: unknown directive `{other}`"),
        }
    }
    d
}

/// The case files, sorted by name.
fn case_files(ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(DIR)
        .expect("tests/diagnostics exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

/// A tensor as it goes into a hand-written checkpoint.
struct RawEntry {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn encode(values: &[f32], dtype: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for &v in values {
        match dtype {
            "F32" => out.extend_from_slice(&v.to_le_bytes()),
            "F64" => out.extend_from_slice(&(v as f64).to_le_bytes()),
            "I64" => out.extend_from_slice(&(v as i64).to_le_bytes()),
            "I32" => out.extend_from_slice(&(v as i32).to_le_bytes()),
            "U8" => out.push(v as u8),
            other => panic!("unsupported dtype `{other}` in checkpoint-edit"),
        }
    }
    out
}

fn dtype_name(s: &str) -> &'static str {
    match s {
        "F32" => "F32",
        "F64" => "F64",
        "I64" => "I64",
        "I32" => "I32",
        "U8" => "U8",
        other => panic!("unsupported dtype `{other}` in checkpoint-edit"),
    }
}

/// Safetensors bytes: 8-byte little-endian header length, JSON header, packed data.
fn write_raw(entries: &[RawEntry]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for e in entries {
        header.insert(
            e.name.clone(),
            serde_json::json!({
                "dtype": e.dtype,
                "shape": e.shape,
                "data_offsets": [offset, offset + e.data.len()],
            }),
        );
        offset += e.data.len();
    }
    let json = serde_json::Value::Object(header).to_string().into_bytes();
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    for e in entries {
        bytes.extend_from_slice(&e.data);
    }
    bytes
}

/// Writes the checkpoint of `source` (seed 0), altered by `edits`, to `path`.
fn write_checkpoint(source: &Elaborated, edits: &[String], path: &Path) {
    let tensors = weights::init_weights(&source.graph, 0);
    let dtype_edits: BTreeMap<&str, &'static str> = edits
        .iter()
        .filter_map(|e| e.strip_prefix("dtype:"))
        .map(|e| {
            let (k, d) = e.rsplit_once(':').expect("dtype:KEY:DT");
            (k, dtype_name(d))
        })
        .collect();
    for k in dtype_edits.keys() {
        assert!(
            tensors.contains_key(*k),
            "checkpoint-edit names `{k}`, which the checkpoint lacks"
        );
    }
    if dtype_edits.is_empty() {
        let list: Vec<(String, &bbc::runtime::Tensor)> =
            tensors.iter().map(|(k, t)| (k.clone(), t)).collect();
        bbc::runtime::save(path, &list).expect("save checkpoint");
    } else {
        let entries: Vec<RawEntry> = tensors
            .iter()
            .map(|(k, t)| {
                let dtype = dtype_edits.get(k.as_str()).copied().unwrap_or("F32");
                let values: Vec<f32> = t.iter().copied().collect();
                RawEntry {
                    name: k.clone(),
                    dtype,
                    shape: t.shape().to_vec(),
                    data: encode(&values, dtype),
                }
            })
            .collect();
        std::fs::write(path, write_raw(&entries)).expect("write checkpoint");
    }
    let mut bytes = std::fs::read(path).expect("read checkpoint back");
    for edit in edits {
        let (kind, arg) = edit.split_once(':').unwrap_or((edit.as_str(), ""));
        match kind {
            "dtype" => {}
            "truncate" => {
                let n: usize = arg.parse().expect("truncate:N");
                bytes.truncate(bytes.len().saturating_sub(n));
            }
            "prefix" => {
                let n: u64 = arg.parse().expect("prefix:N");
                bytes[..8].copy_from_slice(&n.to_le_bytes());
            }
            "header" => {
                let old = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
                let data = bytes[8 + old..].to_vec();
                bytes = (arg.len() as u64).to_le_bytes().to_vec();
                bytes.extend_from_slice(arg.as_bytes());
                bytes.extend_from_slice(&data);
            }
            other => panic!("unknown checkpoint-edit `{other}`"),
        }
    }
    std::fs::write(path, bytes).expect("write edited checkpoint");
}

/// What running one case produced.
struct Outcome {
    rendered: String,
    diags: Vec<Diagnostic>,
    /// Codes that may lack a location in this case (`unlocated=` directives).
    unlocated: Vec<String>,
    /// Why the case is wrong regardless of the expected text (e.g. it compiled).
    problems: Vec<String>,
}

/// Runs the pipeline on one case: load, elaborate, optional checkpoint check.
fn run_case(path: &Path) -> Outcome {
    let name = path.file_stem().unwrap().to_string_lossy().to_string();
    let text = std::fs::read_to_string(path).expect("case is readable");
    let dir = parse_directives(&name, &text);
    let fail = |diags: Vec<Diagnostic>, sources: &SourceMap| Outcome {
        rendered: bbc::render(&diags, Some(sources)),
        diags,
        unlocated: dir.unlocated.clone(),
        problems: Vec::new(),
    };
    let program = match Program::load(path, &FsLoader) {
        Ok(p) => p,
        Err(e) => return fail(e.diagnostics, &e.sources),
    };
    let opts = Options {
        model: dir.model.clone(),
        dims: dir.dims.clone(),
        args: dir.args.clone(),
    };
    let model = match program.elaborate(&opts) {
        Ok(m) => m,
        Err(diags) => return fail(diags, &program.sources),
    };
    let Some(from) = &dir.checkpoint_from else {
        return Outcome {
            rendered: String::new(),
            diags: Vec::new(),
            unlocated: Vec::new(),
            problems: vec![format!(
                "the case compiled without errors (model `{}`)",
                model.model
            )],
        };
    };
    let source = program
        .elaborate(&Options {
            model: Some(from.clone()),
            dims: dir.dims.clone(),
            ..Default::default()
        })
        .unwrap_or_else(|d| {
            panic!(
                "{name}: checkpoint-from model `{from}` must elaborate:\n{}",
                bbc::render(&d, Some(&program.sources))
            )
        });
    let ckpt = std::env::temp_dir().join(format!(
        "bbc-diagnostics-{}-{name}.safetensors",
        std::process::id()
    ));
    write_checkpoint(&source, &dir.edits, &ckpt);
    let result = weights::check_file(&model, &ckpt);
    let _ = std::fs::remove_file(&ckpt);
    match result {
        Ok(_) => Outcome {
            rendered: String::new(),
            diags: Vec::new(),
            unlocated: Vec::new(),
            problems: vec!["the checkpoint check passed".to_string()],
        },
        Err(diags) => {
            let mut out = fail(diags, &program.sources);
            out.rendered = out
                .rendered
                .replace(&ckpt.display().to_string(), CHECKPOINT);
            out
        }
    }
}

/// Runs a case on its own thread (8 MiB stack, like a main thread), catching panics and hangs.
fn run_guarded(path: &Path) -> Result<Outcome, String> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    let handle = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            let _ = tx.send(run_case(&p));
        })
        .expect("spawn case thread");
    match rx.recv_timeout(CASE_TIMEOUT) {
        Ok(out) => {
            let _ = handle.join();
            Ok(out)
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(format!("did not finish within {CASE_TIMEOUT:?} (hang?)"))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(format!("panicked: {msg}"))
            }
            Ok(()) => Err("case thread ended without a result".to_string()),
        },
    }
}

/// Diagnostics that may lack a source location: problems with a file or a command-line
/// option as a whole, not with a place in the spec.
fn may_lack_location(d: &Diagnostic) -> bool {
    matches!(
        d.code,
        // missing import file, unknown model, unknown dim
        "E0204" | "E0206" | "E0207"
        // unexpected checkpoint key, unreadable checkpoint
        | "E0502" | "E0505"
    )
}

/// Checks each rendered diagnostic for a code and a location.
fn shape_problems(out: &Outcome) -> Vec<String> {
    let mut problems = Vec::new();
    let code = regex::Regex::new(r"^E0[1-5]\d\d$").unwrap();
    for d in &out.diags {
        if !code.is_match(d.code) {
            problems.push(format!("diagnostic `{}` has code `{}`", d.message, d.code));
        }
        if d.span.is_none() && !may_lack_location(d) && !out.unlocated.iter().any(|c| c == d.code) {
            problems.push(format!(
                "diagnostic [{}] `{}` has no source location",
                d.code, d.message
            ));
        }
    }
    // Every `error` heading in the text carries a code, except the summary line.
    let heading = regex::Regex::new(r"(?m)^error(\[E0[1-5]\d\d\])?: (.*)$").unwrap();
    for cap in heading.captures_iter(&out.rendered) {
        if cap.get(1).is_none() && !cap[2].starts_with("aborting due to") {
            problems.push(format!("heading without code: {}", &cap[0]));
        }
    }
    problems
}

fn bless() -> bool {
    std::env::var("BBC_BLESS").is_ok_and(|v| v == "1")
}

#[test]
fn every_case_fails_with_the_expected_diagnostics() {
    let cases = case_files("bb");
    assert!(!cases.is_empty(), "no cases in {DIR}");
    let mut failures = Vec::new();
    for path in &cases {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let out = match run_guarded(path) {
            Ok(out) => out,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mut problems = out.problems.clone();
        problems.extend(shape_problems(&out));
        if out.diags.is_empty() && out.problems.is_empty() {
            problems.push("failed without any diagnostic".to_string());
        }
        let expected_path = path.with_extension("stderr");
        if bless() {
            if problems.is_empty() {
                std::fs::write(&expected_path, &out.rendered).expect("write .stderr");
            }
        } else {
            match std::fs::read_to_string(&expected_path) {
                Ok(expected) if expected == out.rendered => {}
                Ok(expected) => problems.push(format!(
                    "output differs from {}\n--- expected\n{expected}--- actual\n{}",
                    expected_path.display(),
                    out.rendered
                )),
                Err(_) => problems.push(format!(
                    "{} is missing (run with BBC_BLESS=1 to create it); output:\n{}",
                    expected_path.display(),
                    out.rendered
                )),
            }
        }
        for p in problems {
            failures.push(format!("{name}: {p}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn no_orphan_expectations() {
    let orphans: Vec<String> = case_files("stderr")
        .into_iter()
        .filter(|p| !p.with_extension("bb").exists())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        orphans.is_empty(),
        ".stderr files without a case: {orphans:?}"
    );
}

#[test]
fn suite_covers_every_phase() {
    let heading = regex::Regex::new(r"(?m)^error\[(E0\d{3})\]: (.*)$").unwrap();
    let mut per_phase: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut distinct: BTreeSet<(String, String)> = BTreeSet::new();
    for path in case_files("stderr") {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).expect("read .stderr");
        for cap in heading.captures_iter(&text) {
            let code = cap[1].to_string();
            per_phase
                .entry(code[..3].to_string())
                .or_default()
                .insert(name.clone());
            distinct.insert((code, cap[2].to_string()));
        }
    }
    for phase in ["E01", "E02", "E03", "E04", "E05"] {
        let n = per_phase.get(phase).map_or(0, BTreeSet::len);
        assert!(n >= 3, "only {n} case(s) report {phase}xx errors");
    }
    assert!(
        distinct.len() >= 25,
        "only {} distinct code+message pairs",
        distinct.len()
    );
}
