//! The language reference's examples are tests.
//!
//! Every fenced block tagged `bb` in `docs/language.md` must compile:
//! - a complete program (one with a `model`) is loaded and every model in it is elaborated with
//!   default options;
//! - a fragment without a model must parse.
//!
//! Info-string attributes, comma-separated after `bb`:
//! - `error=E0303`: the block must fail, and that code must be among its diagnostics;
//! - `keys`: the next fenced block (a `text` block) lists the default model's state_dict, one
//!   `key [shape]` per line, in the order `bbc weights` prints (sorted).
//!
//! Blocks tagged `text` are not compiled. The document must keep at least [`MIN_BB_BLOCKS`]
//! examples, and its op reference must mention every op of the op table.

use bbc::compiler::elab::{Options, Program};
use bbc::compiler::ops;
use bbc::compiler::weights::param_table;
use bbc::grammar::ast::Item;
use bbc::grammar::{parse, Diagnostic, SourceMap};

const DOC: &str = include_str!("../docs/language.md");
const MIN_BB_BLOCKS: usize = 15;
const OP_SECTION: &str = "Op reference";

/// One fenced code block.
struct Fence {
    /// The info string after the opening backticks, e.g. `bb,error=E0303`.
    info: String,
    text: String,
    /// 1-based line of the opening fence.
    line: usize,
}

fn fences(doc: &str) -> Vec<Fence> {
    let mut out = Vec::new();
    let mut open: Option<Fence> = None;
    for (i, line) in doc.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.as_mut() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some(Fence {
                        info: info.trim().to_string(),
                        text: String::new(),
                        line: i + 1,
                    });
                }
            }
            Some(f) => {
                if trimmed.starts_with("```") {
                    out.push(open.take().expect("a block is open"));
                } else {
                    f.text.push_str(line);
                    f.text.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "docs/language.md ends inside a code block");
    out
}

/// The `bb` blocks with their attributes: (number, fence, expected error, expected keys).
struct Example<'a> {
    n: usize,
    fence: &'a Fence,
    error: Option<String>,
    keys: Option<&'a Fence>,
}

fn examples(all: &[Fence]) -> Vec<Example<'_>> {
    let mut out = Vec::new();
    for (i, f) in all.iter().enumerate() {
        let mut attrs = f.info.split(',').map(str::trim);
        if attrs.next() != Some("bb") {
            continue;
        }
        let mut error = None;
        let mut keys = None;
        for a in attrs {
            if let Some(code) = a.strip_prefix("error=") {
                error = Some(code.to_string());
            } else if a == "keys" {
                let next = all.get(i + 1).unwrap_or_else(|| {
                    panic!(
                        "line {}: `bb,keys` must be followed by a text block",
                        f.line
                    )
                });
                assert_eq!(
                    next.info, "text",
                    "line {}: `bb,keys` must be followed by a text block",
                    f.line
                );
                keys = Some(next);
            } else {
                panic!("line {}: unknown attribute `{a}` in ```{}", f.line, f.info);
            }
        }
        out.push(Example {
            n: out.len() + 1,
            fence: f,
            error,
            keys,
        });
    }
    out
}

fn render(diags: &[Diagnostic], sources: &SourceMap) -> String {
    bbc::render(diags, Some(sources))
}

/// Parses a block on its own; `Ok(has_model)` or the rendered diagnostics and their codes.
fn parse_block(name: &str, text: &str) -> Result<bool, (String, Vec<String>)> {
    let mut sources = SourceMap::new();
    let file = sources.add(name, text);
    match parse(&sources, file) {
        Ok(ast) => Ok(ast
            .items
            .iter()
            .any(|i| matches!(i, Item::Model(_) | Item::Variant(_)))),
        Err(d) => Err((
            render(&d, &sources),
            d.iter().map(|d| d.code.to_string()).collect(),
        )),
    }
}

/// Everything that goes wrong compiling a block: rendered text and codes (empty if it compiles).
fn compile(ex: &Example) -> (String, Vec<String>) {
    let name = format!("docs/language.md#{}", ex.n);
    let text = &ex.fence.text;
    let has_model = match parse_block(&name, text) {
        Ok(m) => m,
        Err(e) => return e,
    };
    if !has_model {
        return (String::new(), Vec::new());
    }
    let prog = match Program::from_source(&name, text) {
        Ok(p) => p,
        Err(e) => {
            return (
                e.render(),
                e.diagnostics.iter().map(|d| d.code.to_string()).collect(),
            )
        }
    };
    let mut rendered = String::new();
    let mut codes = Vec::new();
    for model in prog.models() {
        let opts = Options {
            model: Some(model.clone()),
            dims: Vec::new(),
            ..Default::default()
        };
        if let Err(d) = prog.elaborate(&opts) {
            rendered.push_str(&format!("model `{model}`:\n{}", render(&d, &prog.sources)));
            codes.extend(d.iter().map(|d| d.code.to_string()));
        }
    }
    if let Some(keys) = ex.keys {
        if codes.is_empty() {
            if let Some(problem) = check_keys(&prog, keys) {
                rendered.push_str(&problem);
                codes.push("keys".into());
            }
        }
    }
    (rendered, codes)
}

/// The default model's keys and shapes must be exactly the lines of the following text block.
fn check_keys(prog: &Program, keys: &Fence) -> Option<String> {
    let elab = match prog.elaborate(&Options::default()) {
        Ok(e) => e,
        Err(d) => return Some(render(&d, &prog.sources)),
    };
    let actual: Vec<(String, String)> = param_table(&elab.graph)
        .into_iter()
        .map(|p| (p.key, format!("{:?}", p.shape)))
        .collect();
    let listed: Vec<(String, String)> = keys
        .text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let l = l.trim();
            let (key, shape) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (key.to_string(), shape.trim().to_string())
        })
        .collect();
    if listed == actual {
        return None;
    }
    let show = |v: &[(String, String)]| {
        v.iter()
            .map(|(k, s)| format!("  {k} {s}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Some(format!(
        "the keys listed at line {} differ from the model's (`{}`):\nlisted:\n{}\nactual:\n{}",
        keys.line,
        elab.model,
        show(&listed),
        show(&actual)
    ))
}

#[test]
fn examples_compile() {
    let all = fences(DOC);
    let exs = examples(&all);
    assert!(
        exs.len() >= MIN_BB_BLOCKS,
        "docs/language.md has {} ```bb examples; at least {MIN_BB_BLOCKS} are required",
        exs.len()
    );
    let mut failures = Vec::new();
    for ex in &exs {
        let (rendered, codes) = compile(ex);
        let at = format!("example {} (docs/language.md line {})", ex.n, ex.fence.line);
        match &ex.error {
            None if !codes.is_empty() => {
                failures.push(format!("{at} should compile but fails:\n{rendered}"));
            }
            None => {}
            Some(code) if codes.is_empty() => {
                failures.push(format!("{at} should fail with {code} but compiles"));
            }
            Some(code) if !codes.contains(code) => failures.push(format!(
                "{at} should fail with {code} but fails with {}:\n{rendered}",
                codes.join(", ")
            )),
            Some(_) => {}
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn op_reference_lists_every_op() {
    let start = DOC
        .lines()
        .position(|l| l.starts_with("## ") && l.contains(OP_SECTION))
        .unwrap_or_else(|| panic!("docs/language.md has no `## ... {OP_SECTION}` section"));
    let section: Vec<&str> = DOC
        .lines()
        .skip(start + 1)
        .take_while(|l| !l.starts_with("## "))
        .collect();
    let section = section.join("\n");
    let missing: Vec<&str> = ops::table()
        .map(|op| op.name)
        .filter(|name| !section.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "the op reference in docs/language.md does not document: {}",
        missing.join(", ")
    );
}

#[test]
fn fences_are_found() {
    let doc = "a\n```bb\nmodel m() {}\n```\n```text\nx\n```\n```bb,error=E0101\n(\n```\n";
    let all = fences(doc);
    assert_eq!(all.len(), 3);
    let exs = examples(&all);
    assert_eq!(exs.len(), 2);
    assert_eq!(exs[1].error.as_deref(), Some("E0101"));
    assert_eq!(exs[0].fence.text, "model m() {}\n");
}
