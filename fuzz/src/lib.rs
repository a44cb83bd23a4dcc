//! The bodies of the fuzz targets, shared by the libFuzzer entry points in `fuzz_targets/`
//! and by the stable `replay` harness (`src/bin/replay.rs`), so that both run exactly the
//! same code on an input.
//!
//! Every function takes arbitrary bytes and must return normally: a panic, an abort, a hang
//! or an unbounded allocation is a bug in `bbc`. Errors in the input are expected and are
//! rendered (the renderer is part of what is fuzzed), never reported.

use bbc_compiler::elab::{Options, Program};
use bbc_compiler::ir;
use bbc_grammar::diagnostic::render_all;
use bbc_grammar::{parse, SourceMap};

/// The name fuzz inputs are parsed under (imports resolve against it and fail to load).
const NAME: &str = "fuzz.bb";

/// Inputs larger than this are skipped: they only slow the fuzzer down.
pub const MAX_INPUT: usize = 64 << 10;

/// Which body to run on an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Parse,
    Elaborate,
}

impl Target {
    /// The target named `name` (`parse` or `elaborate`), as `cargo fuzz run` names them.
    pub fn from_name(name: &str) -> Option<Target> {
        match name {
            "parse" => Some(Target::Parse),
            "elaborate" => Some(Target::Elaborate),
            _ => None,
        }
    }

    pub fn run(self, data: &[u8]) {
        match self {
            Target::Parse => fuzz_parse(data),
            Target::Elaborate => fuzz_elaborate(data),
        }
    }
}

/// Arbitrary bytes → UTF-8 text → parse, rendering any syntax error.
pub fn fuzz_parse(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let mut sources = SourceMap::new();
    let file = sources.add(NAME, text);
    if let Err(diags) = parse(&sources, file) {
        let _ = render_all(&diags, &sources);
    }
}

/// Arbitrary bytes → UTF-8 text → load as a program → elaborate every model with default
/// options, rendering diagnostics; a graph that elaborates must verify and print as IR text
/// that parses back.
pub fn fuzz_elaborate(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let program = match Program::from_source(NAME, text) {
        Ok(p) => p,
        Err(err) => {
            // Rendered through `Debug`, which renders the diagnostics with their sources.
            let _ = format!("{err:?}");
            return;
        }
    };
    let mut models: Vec<Option<String>> = program.models().into_iter().map(Some).collect();
    if models.is_empty() {
        models.push(None);
    }
    for model in models {
        let opts = Options {
            model: model.clone(),
            dims: Vec::new(),
            ..Default::default()
        };
        match program.elaborate(&opts) {
            Ok(e) => {
                let problems = ir::verify(&e.graph);
                assert!(
                    problems.is_empty(),
                    "{model:?}: invalid graph: {problems:?}"
                );
                let printed = ir::print_text(&e.graph);
                if let Err(err) = ir::parse_text(&printed) {
                    panic!("{model:?}: printed IR does not parse back: {err}");
                }
            }
            Err(diags) => {
                let rendered = render_all(&diags, &program.sources);
                assert!(
                    diags.iter().all(|d| d.code != "E0000"),
                    "{model:?}: internal error:\n{rendered}"
                );
            }
        }
    }
}

fn text(data: &[u8]) -> Option<&str> {
    if data.len() > MAX_INPUT {
        return None;
    }
    std::str::from_utf8(data).ok()
}
