//! Property and robustness tests.
//!
//! - **Deep Sets invariances** (`specs/deep_sets.bb`): with seeded weights and random inputs,
//!   the sum, mean and masked models are invariant under any permutation of the set axis
//!   (independently per batch row); the masked model ignores padded elements entirely and
//!   with a full mask agrees with `deep_sets_mean`.
//! - **Mutated zoo specs**: every spec in `specs/` is mutated at random (byte ranges deleted
//!   or duplicated, language tokens inserted, lines swapped, numbers and identifiers
//!   replaced) and run through the parser, the elaborator (at most two models per mutated
//!   program, small ones preferred) and the diagnostic renderer. Nothing may panic, no run
//!   may take more than [`TIME_LIMIT`], and no internal error (`E0000`, an elaborated graph
//!   that fails the verifier) may come out. The case count is proptest's (256), or
//!   `PROPTEST_CASES`.
//! - **Zoo round-trip**: every model of every spec elaborates with default options, and its
//!   IR text form parses back, prints identically and verifies.
//!
//! A mutated program that makes the process abort (stack overflow, out of memory) cannot be
//! reported through proptest; each case's text is therefore written to
//! `target/properties-last-case.bb` before it runs.

use bbc::compiler::elab::{Options, Program};
use bbc::compiler::{interp, ir, weights::init_weights};
use bbc::grammar::{parse, SourceMap};
use bbc::runtime::Tensor;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The longest a parse + elaboration of one mutated program may take: a hang is a bug.
const TIME_LIMIT: Duration = Duration::from_secs(10);

/// The stack the elaboration thread gets: that of a typical main thread, where `bbc` runs it.
const ELAB_STACK: usize = 8 << 20;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `(file name, text)` of every spec in `specs/`, sorted by name.
fn specs() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(root().join("specs"))
        .expect("specs folder")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "bb"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(&p).expect("readable spec");
            (name, text)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no specs in specs/");
    out
}

/// Proptest's configuration with `default_cases` unless `PROPTEST_CASES` says otherwise.
fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        // A failing case may hang for TIME_LIMIT; keep shrinking bounded.
        max_shrink_time: 120_000,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Deep Sets
// ---------------------------------------------------------------------------------------

const DEEP_SETS: &str = "specs/deep_sets.bb";
const D_IN: usize = 3;

/// Elaborates `model` of the Deep Sets spec with batch `b` and set size `n`.
fn deep_sets_graph(model: &str, b: usize, n: usize) -> ir::Graph {
    let text = std::fs::read_to_string(root().join(DEEP_SETS)).expect("deep_sets.bb");
    let program =
        Program::from_source(DEEP_SETS, &text).unwrap_or_else(|e| panic!("{}", e.render()));
    let opts = Options {
        model: Some(model.to_string()),
        dims: vec![("B".into(), b as i64), ("N".into(), n as i64)],
        ..Default::default()
    };
    match program.elaborate(&opts) {
        Ok(e) => e.graph,
        Err(d) => panic!("{model}: {}", bbc::render(&d, Some(&program.sources))),
    }
}

fn run_y(graph: &ir::Graph, w: &BTreeMap<String, Tensor>, inputs: &[(&str, &Tensor)]) -> Tensor {
    let inputs: HashMap<String, Tensor> = inputs
        .iter()
        .map(|(k, t)| (k.to_string(), (*t).clone()))
        .collect();
    let mut out = interp::run(graph, &inputs, w).expect("the interpreter runs");
    out.remove("y").expect("output `y`")
}

/// `a` and `b` agree to 1e-5 relative (with a floor of 1 on the scale, so that values near
/// zero, where summation order changes the last bits, compare absolutely).
fn close(a: &Tensor, b: &Tensor, what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.shape(), b.shape(), "{}: shapes differ", what);
    for (i, (&x, &y)) in a.iter().zip(b.iter()).enumerate() {
        let scale = 1f32.max(x.abs()).max(y.abs());
        prop_assert!(
            (x - y).abs() <= 1e-5 * scale,
            "{}: element {} differs: {} vs {} (a = {:?}, b = {:?})",
            what,
            i,
            x,
            y,
            a,
            b
        );
    }
    Ok(())
}

fn tensor(shape: &[usize], data: Vec<f32>) -> Tensor {
    Tensor::from_shape_vec(shape.to_vec(), data).expect("shape matches data")
}

/// Applies `perm[b]` to the set axis (axis 1) of row `b`: `out[b, i] = t[b, perm[b][i]]`.
fn permute_rows(t: &Tensor, perms: &[Vec<usize>]) -> Tensor {
    let mut out = t.clone();
    for (b, perm) in perms.iter().enumerate() {
        for (i, &j) in perm.iter().enumerate() {
            let src = t
                .index_axis(ndarray::Axis(0), b)
                .index_axis(ndarray::Axis(0), j)
                .to_owned();
            out.index_axis_mut(ndarray::Axis(0), b)
                .index_axis_mut(ndarray::Axis(0), i)
                .assign(&src);
        }
    }
    out
}

/// A Deep Sets case: batch, set size, x values, one permutation per row, a mask, values to
/// write into padded positions, and a weight seed.
#[derive(Debug, Clone)]
struct SetCase {
    b: usize,
    n: usize,
    x: Vec<f32>,
    perms: Vec<Vec<usize>>,
    mask: Vec<f32>,
    junk: Vec<f32>,
    seed: u64,
}

fn set_case() -> impl Strategy<Value = SetCase> {
    (1usize..3, 1usize..8)
        .prop_flat_map(|(b, n)| {
            let perm = Just((0..n).collect::<Vec<usize>>()).prop_shuffle();
            (
                Just(b),
                Just(n),
                prop::collection::vec(-3.0f32..3.0, b * n * D_IN),
                prop::collection::vec(perm, b),
                prop::collection::vec(prop::bool::weighted(0.6), b * n),
                prop::collection::vec(-1.0e3f32..1.0e3, b * n * D_IN),
                any::<u64>(),
            )
        })
        .prop_map(|(b, n, x, perms, mask, junk, seed)| SetCase {
            b,
            n,
            x,
            perms,
            mask: mask
                .into_iter()
                .map(|m| if m { 1.0 } else { 0.0 })
                .collect(),
            junk,
            seed,
        })
}

fn check_unmasked_invariance(model: &str, c: &SetCase) -> Result<(), TestCaseError> {
    let graph = deep_sets_graph(model, c.b, c.n);
    let w = init_weights(&graph, c.seed);
    let x = tensor(&[c.b, c.n, D_IN], c.x.clone());
    let xp = permute_rows(&x, &c.perms);
    let y = run_y(&graph, &w, &[("x", &x)]);
    let yp = run_y(&graph, &w, &[("x", &xp)]);
    prop_assert_eq!(y.shape(), &[c.b, 1][..]);
    close(&y, &yp, &format!("{model}: permuted set"))
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn deep_sets_sum_is_permutation_invariant(c in set_case()) {
        check_unmasked_invariance("deep_sets_sum", &c)?;
    }

    #[test]
    fn deep_sets_mean_is_permutation_invariant(c in set_case()) {
        check_unmasked_invariance("deep_sets_mean", &c)?;
    }

    #[test]
    fn deep_sets_masked_is_invariant_and_ignores_padding(c in set_case()) {
        let graph = deep_sets_graph("deep_sets_masked", c.b, c.n);
        let w = init_weights(&graph, c.seed);
        let x = tensor(&[c.b, c.n, D_IN], c.x.clone());
        let mask = tensor(&[c.b, c.n], c.mask.clone());
        let y = run_y(&graph, &w, &[("x", &x), ("mask", &mask)]);

        // Permuting elements and mask together.
        let xp = permute_rows(&x, &c.perms);
        let mp = permute_rows(&mask, &c.perms);
        let yp = run_y(&graph, &w, &[("x", &xp), ("mask", &mp)]);
        close(&y, &yp, "deep_sets_masked: (x, mask) permuted jointly")?;

        // Overwriting padded elements with arbitrary finite values. (Non-finite values do
        // leak through: the model masks by multiplication, and inf * 0 = NaN.)
        let mut xj = x.clone();
        for (k, v) in xj.iter_mut().enumerate() {
            if c.mask[k / D_IN] == 0.0 {
                *v = c.junk[k];
            }
        }
        let yj = run_y(&graph, &w, &[("x", &xj), ("mask", &mask)]);
        close(&y, &yj, "deep_sets_masked: padded elements changed")?;

        // A full mask is plain mean pooling; both models name their parameters alike.
        let full = Tensor::ones(vec![c.b, c.n]);
        let y_full = run_y(&graph, &w, &[("x", &x), ("mask", &full)]);
        let mean = deep_sets_graph("deep_sets_mean", c.b, c.n);
        let y_mean = run_y(&mean, &w, &[("x", &x)]);
        close(&y_full, &y_mean, "deep_sets_masked with a full mask vs deep_sets_mean")?;
    }
}

// ---------------------------------------------------------------------------------------
// Mutated specs
// ---------------------------------------------------------------------------------------

/// Tokens inserted by mutation: punctuation, operators, keywords, numbers and fragments.
const TOKENS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ";",
    ",",
    ":",
    "=",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "*",
    "**",
    "/",
    "//",
    "%",
    "++",
    "!",
    "&&",
    "||",
    ".",
    "..",
    "->",
    "=>",
    "|>",
    "@",
    "@_",
    "_",
    "\"",
    "\"{",
    "}\"",
    "#",
    "\\",
    "\n",
    "for",
    "in",
    "if",
    "else",
    "seq {",
    "scope \"s\" {",
    "block",
    "model",
    "fn",
    "let",
    "const",
    "param",
    "buffer",
    "input",
    "output",
    "return",
    "assert",
    "import",
    "as",
    "layer",
    "rename",
    "ignore",
    "true",
    "false",
    "none",
    "int",
    "float",
    "str",
    "bool",
    "tensor",
    "f32",
    "0",
    "1",
    "-1",
    "2",
    "7",
    "1e-6",
    "1.5",
    "-0.0",
    "1e308",
    "1e400",
    "999999999999999999999",
    "9223372036854775807",
    "-9223372036854775808",
    "4294967296",
    "0..1000000000",
    "x",
    "h",
    "C",
    "B",
    "N",
    "depths",
    "dims",
    "len(",
    "range(",
    "relu()",
    "linear(out=",
    "conv2d(",
    "[0] * 1000000",
    "[1, 2, 3]",
];

/// Numbers that replace a number of the spec.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "3",
    "0.0",
    "-0.5",
    "1e-30",
    "65536",
    "1000000",
    "2147483648",
    "999999999999999999999",
    "9223372036854775807",
    "1e308",
    "1e999",
];

/// One edit. Positions and indices are reduced modulo what they index, so every mutation
/// applies to every text (and shrinks toward the start of the file).
#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Duplicate { at: usize, len: usize },
    Insert { at: usize, token: usize },
    SwapLines { a: usize, b: usize },
    ReplaceNumber { which: usize, with: usize },
    ReplaceIdent { which: usize, with: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 1usize..128).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        (any::<usize>(), any::<usize>()).prop_map(|(at, token)| Mutation::Insert { at, token }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        (any::<usize>(), any::<usize>())
            .prop_map(|(which, with)| Mutation::ReplaceNumber { which, with }),
        (any::<usize>(), any::<usize>())
            .prop_map(|(which, with)| Mutation::ReplaceIdent { which, with }),
    ]
}

/// The largest char boundary of `s` at or below `i`.
fn floor_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Byte ranges of maximal runs of bytes that satisfy `start` then `cont`.
fn tokens_of(s: &str, start: fn(u8) -> bool, cont: fn(u8) -> bool) -> Vec<(usize, usize)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let prev_word = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if start(b[i]) && !prev_word {
            let j = (i + 1..b.len()).find(|&j| !cont(b[j])).unwrap_or(b.len());
            out.push((i, j));
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

fn numbers(s: &str) -> Vec<(usize, usize)> {
    tokens_of(
        s,
        |c| c.is_ascii_digit(),
        |c| c.is_ascii_digit() || c == b'.',
    )
}

fn idents(s: &str) -> Vec<(usize, usize)> {
    tokens_of(
        s,
        |c| c.is_ascii_alphabetic() || c == b'_',
        |c| c.is_ascii_alphanumeric() || c == b'_',
    )
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut s = text.to_string();
    let pos = |at: usize| floor_boundary(text, at % (text.len() + 1));
    match *m {
        Mutation::Delete { at, len } => {
            let a = pos(at);
            let b = floor_boundary(text, a + len);
            s.replace_range(a..b, "");
        }
        Mutation::Duplicate { at, len } => {
            let a = pos(at);
            let b = floor_boundary(text, a + len);
            s.insert_str(b, &text[a..b]);
        }
        Mutation::Insert { at, token } => {
            let tok = TOKENS[token % TOKENS.len()];
            let a = pos(at);
            s.insert_str(a, &format!(" {tok} "));
        }
        Mutation::SwapLines { a, b } => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let n = lines.len();
            lines.swap(a % n, b % n);
            s = lines.join("\n");
        }
        Mutation::ReplaceNumber { which, with } => {
            let nums = numbers(text);
            if !nums.is_empty() {
                let (a, b) = nums[which % nums.len()];
                s.replace_range(a..b, NUMBERS[with % NUMBERS.len()]);
            }
        }
        Mutation::ReplaceIdent { which, with } => {
            let ids = idents(text);
            if !ids.is_empty() {
                let (a, b) = ids[which % ids.len()];
                let (c, d) = ids[with % ids.len()];
                s.replace_range(a..b, &text[c..d]);
            }
        }
    }
    s
}

/// Models that elaborate slowly enough to be picked only rarely.
const BIG_MODELS: &[&str] = &["convnext_base", "convnext_small", "convnext_tiny"];

/// What one run of the pipeline on a mutated text found wrong, if anything.
enum Outcome {
    Fine,
    Panicked(String),
    Internal(String),
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

/// Parses `text` (rendering any syntax error), loads it as a program, and elaborates up to
/// two of its models (chosen by `picks`, small ones preferred; `small_dims` binds H=W=32
/// where a model has them), rendering every diagnostic.
fn pipeline(name: &str, text: &str, picks: (usize, usize), small_dims: bool) -> Outcome {
    let mut sources = SourceMap::new();
    let file = sources.add(name, text);
    if let Err(diags) = parse(&sources, file) {
        let _ = bbc::render(&diags, Some(&sources));
        return Outcome::Fine;
    }
    let program = match Program::from_source(name, text) {
        Ok(p) => p,
        Err(d) => {
            let _ = d.render();
            return Outcome::Fine;
        }
    };
    let models = program.models();
    let (small, big): (Vec<&String>, Vec<&String>) = models
        .iter()
        .partition(|m| !BIG_MODELS.contains(&m.as_str()));
    // Three picks in four come from the small models when there are any.
    let choose = |k: usize| -> Option<&String> {
        let pool = if !small.is_empty() && (!k.is_multiple_of(4) || big.is_empty()) {
            &small
        } else {
            &big
        };
        (!pool.is_empty()).then(|| pool[(k / 4) % pool.len()])
    };
    let mut chosen: Vec<Option<String>> = Vec::new();
    for k in [picks.0, picks.1] {
        let m = choose(k).cloned();
        if !chosen.contains(&m) {
            chosen.push(m);
        }
    }
    if models.is_empty() {
        chosen = vec![None];
    }
    for model in chosen {
        let has_hw = text.contains("H=") && text.contains("W=") && name.contains("convnext");
        let dims = if small_dims && has_hw {
            vec![("H".into(), 32), ("W".into(), 32)]
        } else {
            Vec::new()
        };
        let opts = Options {
            model: model.clone(),
            dims,
            ..Default::default()
        };
        match program.elaborate(&opts) {
            Ok(e) => {
                let problems = ir::verify(&e.graph);
                if !problems.is_empty() {
                    return Outcome::Internal(format!("{model:?}: verifier: {problems:?}"));
                }
                let printed = ir::print_text(&e.graph);
                if let Err(err) = ir::parse_text(&printed) {
                    return Outcome::Internal(format!(
                        "{model:?}: IR text does not parse back: {err}"
                    ));
                }
            }
            Err(diags) => {
                let rendered = bbc::render(&diags, Some(&program.sources));
                if diags.iter().any(|d| d.code == "E0000") {
                    return Outcome::Internal(format!("{model:?}: {rendered}"));
                }
            }
        }
    }
    Outcome::Fine
}

/// Runs [`pipeline`] on its own thread under [`TIME_LIMIT`], catching panics.
fn run_guarded(name: &str, text: &str, picks: (usize, usize), small_dims: bool) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let (name, text) = (name.to_string(), text.to_string());
    std::thread::Builder::new()
        .name("mutated-spec".into())
        .stack_size(ELAB_STACK)
        .spawn(move || {
            let start = Instant::now();
            let r = catch_unwind(AssertUnwindSafe(|| {
                pipeline(&name, &text, picks, small_dims)
            }));
            let _ = tx.send((r, start.elapsed()));
        })
        .expect("spawn the elaboration thread");
    match rx.recv_timeout(TIME_LIMIT) {
        Ok((Ok(outcome), _)) => outcome,
        Ok((Err(p), _)) => Outcome::Panicked(panic_message(&*p)),
        // The thread is left running; the test fails.
        Err(_) => Outcome::Panicked(format!("no result within {TIME_LIMIT:?} (hang)")),
    }
}

fn last_case_path() -> PathBuf {
    root().join("target/properties-last-case.bb")
}

fn spec_case() -> impl Strategy<Value = (usize, Vec<Mutation>, (usize, usize), bool)> {
    (
        any::<usize>(),
        prop::collection::vec(mutation(), 1..5),
        (any::<usize>(), any::<usize>()),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(config(ProptestConfig::default().cases))]

    #[test]
    fn mutated_zoo_specs_never_panic_the_parser_or_elaborator(
        (which, muts, picks, small_dims) in spec_case()
    ) {
        let specs = specs();
        let (name, original) = &specs[which % specs.len()];
        let text = muts.iter().fold(original.clone(), |t, m| apply(&t, m));
        let _ = std::fs::write(last_case_path(), &text);
        match run_guarded(name, &text, picks, small_dims) {
            Outcome::Fine => {}
            Outcome::Panicked(msg) => prop_assert!(
                false,
                "{} mutated by {:?} panicked or hung: {}\n--- mutated text ---\n{}",
                name, muts, msg, text
            ),
            Outcome::Internal(msg) => prop_assert!(
                false,
                "{} mutated by {:?} gave an internal error: {}\n--- mutated text ---\n{}",
                name, muts, msg, text
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Zoo round-trip
// ---------------------------------------------------------------------------------------

#[test]
fn every_zoo_model_elaborates_and_its_ir_text_round_trips() {
    let mut count = 0;
    for (name, text) in specs() {
        let path = format!("specs/{name}");
        let program =
            Program::from_source(&path, &text).unwrap_or_else(|e| panic!("{path}: {}", e.render()));
        let models = program.models();
        assert!(!models.is_empty(), "{path} defines no model");
        for model in models {
            let opts = Options {
                model: Some(model.clone()),
                dims: Vec::new(),
                ..Default::default()
            };
            let e = program.elaborate(&opts).unwrap_or_else(|d| {
                panic!(
                    "{path}: {model}: {}",
                    bbc::render(&d, Some(&program.sources))
                )
            });
            assert!(ir::verify(&e.graph).is_empty(), "{model}: verifier");
            let printed = ir::print_text(&e.graph);
            let parsed = ir::parse_text(&printed)
                .unwrap_or_else(|err| panic!("{model}: IR text does not parse: {err}"));
            let problems = ir::verify(&parsed);
            assert!(
                problems.is_empty(),
                "{model}: parsed IR fails the verifier: {problems:?}"
            );
            let reprinted = ir::print_text(&parsed);
            if reprinted != printed {
                let first = printed
                    .lines()
                    .zip(reprinted.lines())
                    .position(|(a, b)| a != b);
                panic!("{model}: IR text does not round-trip (first differing line: {first:?})");
            }
            count += 1;
        }
    }
    assert!(count >= 10, "expected the zoo's models, elaborated {count}");
}

// ---------------------------------------------------------------------------------------
// The mutator itself
// ---------------------------------------------------------------------------------------

#[test]
fn mutations_keep_text_valid_and_change_it() {
    let text = "bb 0.1; # — é\nmodel m(a: int = 12) { input x: f32[B=1, a]; output y = x; }\n";
    let muts = [
        Mutation::Delete { at: 17, len: 3 },
        Mutation::Duplicate { at: 14, len: 9 },
        Mutation::Insert { at: 16, token: 3 },
        Mutation::SwapLines { a: 0, b: 1 },
        Mutation::ReplaceNumber { which: 2, with: 0 },
        Mutation::ReplaceIdent { which: 3, with: 1 },
    ];
    for m in &muts {
        let out = apply(text, m);
        assert_ne!(out, text, "{m:?} left the text unchanged");
    }
    // Digits inside identifiers (`f32`) are not numbers.
    let nums: Vec<&str> = numbers(text).iter().map(|&(a, b)| &text[a..b]).collect();
    assert_eq!(nums, ["0.1", "12", "1"]);
}

// ---------------------------------------------------------------------------------------
// Known adversarial inputs
// ---------------------------------------------------------------------------------------

/// Minimal reproducers of the panics, hangs and blowups the fuzzers and reviews found: each
/// must fail with a diagnostic (or elaborate), promptly and in bounded memory.
#[test]
fn adversarial_inputs_fail_cleanly() {
    let wrap = |body: &str| {
        format!(
            "bb 0.1;\nmodel m() {{\n    input x: f32[1, 3, 8, 8];\n{body}\n    output y = x;\n}}\n"
        )
    };
    let cases = [
        // ops/common.rs window_out: `len + 2 * pad` overflows.
        wrap("    c = conv2d(x, out=4, k=3, pad=9223372036854775807);"),
        // ops/layout.rs reshape_target: the product of the target sizes overflows.
        wrap("    r = reshape(x, [4, 9223372036854775807]);"),
        // elab/eval.rs binary, `a..b`: `b - a` overflows.
        wrap("    let v = (-9223372036854775807 - 1)..9223372036854775807;"),
        // elab/builtins.rs range: the length computation overflows.
        wrap("    let v = range(0, 9223372036854775807, 4611686018427387904);"),
        wrap("    let v = range(9223372036854775807, -9223372036854775807 - 1, -1);"),
        // elab/builtins.rs enumerate: `start + i` overflows.
        wrap("    let v = enumerate([1, 2], start=9223372036854775807);"),
        // Allocation without end: many large ranges, doubling shared lists, long strings.
        wrap("    let v = [0..1000000 for i in 0..1000];"),
        wrap("    let v = sum([len(str(0..1000000)) for i in 0..1000000]);"),
        "bb 0.1;\nfn grow(s, n: int) = if n == 0 { s } else { grow([s, s], n - 1) };\n\
         model m() {\n    let t = grow([1], 50);\n    assert t == t;\n    let u = \"{t}\";\n    \
         input x: f32[1, 4];\n    output y = x;\n}\n"
            .to_string(),
        "bb 0.1;\nfn grow(s, n: int) = if n == 0 { s } else { grow(s ++ s, n - 1) };\n\
         model m() {\n    let t = grow(\"ab\", 40);\n    input x: f32[1, 4];\n    output y = x;\n}\n"
            .to_string(),
        // Deeply nested lists must not overflow the stack when compared or printed.
        wrap("    let v = [1];\n    for i in 0..100000 { let v = [v]; }\n    assert v == v;"),
        // elab/eval.rs unique -> ir::Graph::find: naming is quadratic in the graph size, so
        // reaching the 200,000-value limit takes minutes.
        "bb 0.1;\nmodel m() {\n    input x: f32[1, 4];\n    h = x;\n    \
         for i in 0..1000000 as \"l{i}\" {\n        h = relu(h) @_;\n    }\n    \
         output y = h;\n}\n"
            .to_string(),
    ];
    let mut bad = Vec::new();
    for text in &cases {
        match run_guarded("adversarial.bb", text, (1, 1), false) {
            Outcome::Fine => {}
            Outcome::Panicked(m) | Outcome::Internal(m) => bad.push(format!("{m}\n{text}")),
        }
    }
    // elab/eval.rs binary, `++` on lists has no MAX_LIST check: 2^21 elements must be E0311.
    let text = "bb 0.1;\nfn grow(s, n: int) = if n == 0 { s } else { grow(s ++ s, n - 1) };\n\
                model m() {\n    let s = grow([1], 21);\n    input x: f32[1, 4];\n    \
                output y = x;\n}\n";
    let program = Program::from_source("concat.bb", text).expect("parses");
    match program.elaborate(&Options::default()) {
        Err(d) if d.iter().any(|d| d.code == "E0311") => {}
        _ => bad.push(format!(
            "a list of 2^21 elements built with `++` is not E0311\n{text}"
        )),
    }
    assert!(
        bad.is_empty(),
        "{} of {} failed:\n{}",
        bad.len(),
        cases.len() + 1,
        bad.join("\n")
    );
}
