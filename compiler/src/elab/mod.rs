//! Elaboration: from parsed `.bb` files to a Graph IR for one model.
//!
//! [`Program::load`] reads a spec and its imports; [`Program::elaborate`] evaluates one model
//! at compile time (loops unrolled, blocks inlined, parameters named by path, shapes checked)
//! and returns the graph with its parameter table, or every diagnostic found.

mod builtins;
mod einops;
mod eval;
mod literal;
mod value;

pub use builtins::{make_divisible, round_half_even};
pub use eval::MAX_STEPS;

use crate::ir::{self, Graph};
use bbc_grammar::ast::{self, Item};
use bbc_grammar::{did_you_mean, Diagnostic, FileId, Frame, Phase, SourceMap, Span};
use eval::{BodyKind, Ctx, Elab};
pub use literal::{parse_literal, LiteralError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use value::{ArgValue, Callable, Hint, Value};

/// Stable diagnostic codes, grouped by phase (E01xx syntax codes live in the parser).
pub mod codes {
    pub const UNKNOWN_NAME: &str = "E0201";
    pub const DUPLICATE_ITEM: &str = "E0202";
    pub const BAD_ARG: &str = "E0203";
    pub const IMPORT: &str = "E0204";
    pub const IMPORT_CYCLE: &str = "E0205";
    pub const UNKNOWN_MODEL: &str = "E0206";
    pub const UNKNOWN_DIM: &str = "E0207";
    pub const TYPE: &str = "E0301";
    pub const ASSERT: &str = "E0302";
    pub const UNNAMED: &str = "E0303";
    pub const DUPLICATE_PATH: &str = "E0304";
    pub const MISSING_DIM: &str = "E0305";
    pub const BAD_PATH: &str = "E0306";
    pub const MISPLACED: &str = "E0307";
    pub const OVERFLOW: &str = "E0308";
    pub const DIV_ZERO: &str = "E0309";
    pub const INDEX: &str = "E0310";
    pub const LIMIT: &str = "E0311";
    pub const NO_OUTPUT: &str = "E0312";
    pub const BAD_VALUE: &str = "E0313";
    pub const SHAPE: &str = "E0401";
    pub const TOO_LARGE: &str = "E0402";
}

/// One loaded file's global names: items, imports and evaluated top-level `let`s.
pub struct Module {
    pub file: FileId,
    items: HashMap<String, Value>,
    /// Top-level `let` names not evaluated yet (for a precise "used before its `let`").
    pending: HashSet<String>,
    /// The definition each name refers to, so one item imported along two paths is one item.
    origins: HashMap<String, String>,
}

impl Module {
    fn get(&self, name: &str) -> Option<Value> {
        self.items.get(name).cloned()
    }

    /// Whether `name` is a top-level `let` that has not been evaluated yet.
    pub fn is_pending(&self, name: &str) -> bool {
        self.pending.contains(name)
    }

    fn names(&self) -> Vec<String> {
        self.items.keys().cloned().collect()
    }
}

/// Reads source files; the default reads from disk, tests can serve text from memory.
pub trait Loader {
    fn read(&self, path: &Path) -> std::io::Result<String>;
}

pub struct FsLoader;

/// Specs are text of human size; anything larger is a mistake (a dataset, `/dev/zero`).
pub const MAX_SOURCE_BYTES: u64 = 16 << 20;

impl Loader for FsLoader {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        use std::io::{Error, ErrorKind};
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() {
            return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
        }
        if meta.len() > MAX_SOURCE_BYTES {
            let msg = format!(
                "{} bytes is too large for a spec (the limit is {MAX_SOURCE_BYTES})",
                meta.len()
            );
            return Err(Error::new(ErrorKind::InvalidInput, msg));
        }
        let bytes = std::fs::read(path)?;
        String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            Error::new(
                ErrorKind::InvalidData,
                format!("invalid UTF-8 on line {line} (byte {at})"),
            )
        })
    }
}

/// Serves files from a map (for tests and embedding).
pub struct MemLoader(pub HashMap<PathBuf, String>);

impl Loader for MemLoader {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
    }
}

struct Parsed {
    file: FileId,
    ast: Rc<ast::File>,
    /// `(alias, module index, import span)` for each import, in order.
    imports: Vec<(Option<String>, usize, Span)>,
}

/// A spec and everything it imports, parsed.
pub struct Program {
    pub sources: SourceMap,
    parsed: Vec<Parsed>,
}

/// Loading failed: every diagnostic, with the sources they point into.
pub struct LoadError {
    pub sources: SourceMap,
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadError {
    /// The diagnostics rendered as `bbc` prints them.
    pub fn render(&self) -> String {
        bbc_grammar::diagnostic::render_all(&self.diagnostics, &self.sources)
    }
}

impl std::fmt::Debug for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

/// Which model to build, and the size parameters to bind.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub model: Option<String>,
    pub dims: Vec<(String, i64)>,
    /// Arguments for the model's own parameters (`NAME`, literal text such as `3`, `1.5`,
    /// `true`, `"avg"` or `[1, 2]`), e.g. for a variant `model v(phi: int) = base(...)`.
    pub args: Vec<(String, String)>,
}

/// Where a parameter or buffer was declared.
#[derive(Clone, Debug)]
pub struct ParamSite {
    pub span: Span,
    pub chain: Vec<Frame>,
}

/// An elaborated model: its graph and the declaring site of every state_dict key.
pub struct Elaborated {
    pub model: String,
    pub graph: Graph,
    pub params: BTreeMap<String, ParamSite>,
}

fn io_diag(path: &Path, err: &std::io::Error, at: Option<Span>) -> Diagnostic {
    let d = Diagnostic::new(
        Phase::Resolution,
        codes::IMPORT,
        format!("cannot read `{}`: {err}", path.display()),
    );
    match at {
        Some(span) => d.at(span, "imported here"),
        None => d,
    }
}

impl Program {
    /// Loads the spec at `path` and, recursively, its imports.
    pub fn load(path: &Path, loader: &dyn Loader) -> Result<Program, LoadError> {
        let mut prog = Program {
            sources: SourceMap::new(),
            parsed: Vec::new(),
        };
        let mut by_path = HashMap::new();
        let mut stack = Vec::new();
        let mut diags = Vec::new();
        prog.load_file(path, None, loader, &mut by_path, &mut stack, &mut diags);
        if diags.is_empty() {
            Ok(prog)
        } else {
            Err(LoadError {
                sources: prog.sources,
                diagnostics: diags,
            })
        }
    }

    /// Loads a spec from text (imports are resolved against the current directory).
    pub fn from_source(name: &str, text: &str) -> Result<Program, LoadError> {
        let loader = MemLoader(HashMap::from([(PathBuf::from(name), text.to_string())]));
        Program::load(Path::new(name), &loader)
    }

    fn load_file(
        &mut self,
        path: &Path,
        at: Option<Span>,
        loader: &dyn Loader,
        by_path: &mut HashMap<PathBuf, usize>,
        stack: &mut Vec<PathBuf>,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<usize> {
        let key = normalize(path);
        if let Some(&i) = by_path.get(&key) {
            return Some(i);
        }
        if stack.contains(&key) {
            let cycle: Vec<String> = stack
                .iter()
                .chain([&key])
                .map(|p| p.display().to_string())
                .collect();
            let mut d = Diagnostic::new(Phase::Resolution, codes::IMPORT_CYCLE, "import cycle")
                .with_note(format!("cycle: {}", cycle.join(" -> ")));
            if let Some(span) = at {
                d = d.at(span, "this import closes the cycle");
            }
            diags.push(d);
            return None;
        }
        let text = match loader.read(path) {
            Ok(t) => t,
            Err(e) => {
                diags.push(io_diag(path, &e, at));
                return None;
            }
        };
        // A UTF-8 byte-order mark is not part of the program.
        let text = match text.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_string(),
            None => text,
        };
        let file = self.sources.add(path.display().to_string(), text);
        let ast = match bbc_grammar::parse(&self.sources, file) {
            Ok(ast) => Rc::new(ast),
            Err(ds) => {
                diags.extend(ds);
                return None;
            }
        };
        stack.push(key.clone());
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut imports = Vec::new();
        for item in &ast.items {
            if let Item::Import {
                path: p,
                path_span,
                alias,
                ..
            } = item
            {
                if let Some(i) = self.load_file(
                    &dir.join(p),
                    Some(*path_span),
                    loader,
                    by_path,
                    stack,
                    diags,
                ) {
                    imports.push((alias.as_ref().map(|a| a.name.clone()), i, *path_span));
                }
            }
        }
        stack.pop();
        let index = self.parsed.len();
        self.parsed.push(Parsed { file, ast, imports });
        by_path.insert(key, index);
        Some(index)
    }

    fn root(&self) -> &Parsed {
        self.parsed
            .last()
            .expect("a loaded program has its root file last")
    }

    /// Models and model variants of the root file, in source order.
    pub fn models(&self) -> Vec<String> {
        self.root()
            .ast
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Model(m) => Some(m.name.name.clone()),
                Item::Variant(v) => Some(v.name.name.clone()),
                _ => None,
            })
            .collect()
    }

    /// Checks what holds for the spec as a whole, before any model is chosen: every file's
    /// names resolve once (no item defined twice, imports that exist) and its top-level
    /// `let`s evaluate.
    pub fn resolve(&self) -> Result<(), Vec<Diagnostic>> {
        self.resolved(HashMap::new()).map(drop)
    }

    /// An elaborator with every file's module built and its `let`s evaluated.
    fn resolved(&self, dims: HashMap<String, i64>) -> Result<Elab<'_>, Vec<Diagnostic>> {
        let mut e = Elab::new(&self.sources, Vec::new(), dims);
        for (index, parsed) in self.parsed.iter().enumerate() {
            let module = self.build_module(&mut e, index, parsed);
            e.modules.push(module);
            self.eval_lets(&mut e, index, parsed);
        }
        if e.diags.is_empty() {
            Ok(e)
        } else {
            Err(e.diags)
        }
    }

    /// Elaborates one model of the root file.
    pub fn elaborate(&self, opts: &Options) -> Result<Elaborated, Vec<Diagnostic>> {
        if let Some((k, v)) = opts.dims.iter().find(|(_, v)| *v <= 0) {
            let d = Diagnostic::new(
                Phase::Elaboration,
                codes::BAD_VALUE,
                format!("size parameter `{k}` must be positive, got {v}"),
            );
            return Err(vec![d]);
        }
        let dims: HashMap<String, i64> = opts.dims.iter().cloned().collect();
        let mut e = self.resolved(dims)?;
        let root = self.parsed.len() - 1;
        let models = self.models();
        let name = match &opts.model {
            Some(m) => m.clone(),
            None => match models.last() {
                Some(m) => m.clone(),
                None => {
                    let d = Diagnostic::new(
                        Phase::Resolution,
                        codes::UNKNOWN_MODEL,
                        format!("`{}` defines no model", self.sources.name(self.root().file)),
                    )
                    .with_help("add `model name(...) { ... }`");
                    return Err(vec![d]);
                }
            },
        };
        let Some(Value::Callable(entry)) = e.modules[root].get(&name).filter(|v| {
            matches!(
                v,
                Value::Callable(Callable::Model { .. } | Callable::Variant { .. })
            )
        }) else {
            let mut d = Diagnostic::new(
                Phase::Resolution,
                codes::UNKNOWN_MODEL,
                format!("no model named `{name}`"),
            )
            .with_note(format!("models in this file: {}", models.join(", ")));
            if let Some(s) = did_you_mean(&name, models.iter().map(String::as_str)) {
                d = d.with_help(format!("did you mean `{s}`?"));
            }
            return Err(vec![d]);
        };
        e.graph.name = name.clone();
        let entry_span = match &entry {
            Callable::Model { def, .. } => def.name.span,
            Callable::Variant { def, .. } => def.name.span,
            _ => unreachable!("filtered to models and variants above"),
        };
        let mut overrides = Vec::new();
        for (k, text) in &opts.args {
            match parse_literal(text) {
                Ok(value) => overrides.push(ArgValue {
                    name: Some(k.clone()),
                    value,
                    span: entry_span,
                    origin: Some(format!("--arg {k}={text}").into()),
                }),
                Err(why) => {
                    let column = text[..why.at].chars().count() + 1;
                    let mut d = Diagnostic::new(
                        Phase::Elaboration,
                        codes::BAD_VALUE,
                        format!(
                            "cannot read the value of model argument `{k}`: {}",
                            why.message
                        ),
                    )
                    .with_note(format!(
                        "in `--arg {k}={}`, at character {column} of the value",
                        excerpt(text, why.at)
                    ));
                    if why.syntax {
                        d = d.with_help(
                            "use a literal: an int, a float, true/false/none, a \"string\" or a [list]",
                        );
                    }
                    return Err(vec![d]);
                }
            }
        }
        self.run_model(&mut e, entry, overrides, 0);
        if e.diags.is_empty() {
            let mut unused: Vec<String> = e
                .dims
                .iter()
                .filter(|(_, (_, used))| !used)
                .map(|(k, _)| k.clone())
                .collect();
            unused.sort();
            let mut known = e.size_params.clone();
            known.dedup();
            for k in unused {
                let mut d = Diagnostic::new(
                    Phase::Resolution,
                    codes::UNKNOWN_DIM,
                    format!("model `{name}` has no size parameter `{k}`"),
                );
                d = match (did_you_mean(&k, known.iter().map(String::as_str)), known.is_empty()) {
                    (Some(s), _) => d.with_help(format!("did you mean `{s}`?")),
                    (None, true) => d.with_help("size parameters are the named dims of `input` statements, e.g. `input x: f32[B=1, 3, H=224, W=224];`"),
                    (None, false) => d,
                };
                if !known.is_empty() {
                    d = d.with_note(format!("its size parameters are: {}", known.join(", ")));
                }
                e.diags.push(d);
            }
            if e.graph.outputs.is_empty() && e.diags.is_empty() {
                e.diags.push(
                    Diagnostic::new(
                        Phase::Elaboration,
                        codes::NO_OUTPUT,
                        format!("model `{name}` has no outputs"),
                    )
                    .at(entry_span, "this model produces nothing")
                    .with_help("add `output name = expr;`"),
                );
            }
        }
        if !e.diags.is_empty() {
            return Err(e.diags);
        }
        let problems = ir::verify(&e.graph);
        if !problems.is_empty() {
            let d = Diagnostic::new(
                Phase::Elaboration,
                "E0000",
                "internal error: the elaborated graph is invalid",
            )
            .with_note(problems.join("\n"))
            .with_help("this is a bug in bbc; please report it with the spec");
            return Err(vec![d]);
        }
        let params = e
            .params
            .iter()
            .map(|(k, o)| {
                (
                    k.clone(),
                    ParamSite {
                        span: o.span,
                        chain: o.chain.clone(),
                    },
                )
            })
            .collect();
        Ok(Elaborated {
            model: name,
            graph: e.graph,
            params,
        })
    }

    fn build_module(&self, e: &mut Elab, index: usize, parsed: &Parsed) -> Module {
        let mut items: HashMap<String, Value> = HashMap::new();
        let mut pending = HashSet::new();
        let mut spans: HashMap<String, Span> = HashMap::new();
        // Where each name comes from: the same item reached through two imports (a diamond)
        // is one item, not a duplicate.
        let mut origins: HashMap<String, String> = HashMap::new();
        let mut define = |e: &mut Elab,
                          name: &ast::Ident,
                          v: Value,
                          origin: String,
                          items: &mut HashMap<String, Value>| {
            if origins.get(&name.name) == Some(&origin) {
                return;
            }
            origins.insert(name.name.clone(), origin);
            if let Some(prev) = spans.get(&name.name) {
                let d = Diagnostic::new(
                    Phase::Resolution,
                    codes::DUPLICATE_ITEM,
                    format!("`{}` is defined twice", name.name),
                )
                .at(name.span, "defined again here")
                .with_secondary(*prev, "first defined here");
                e.report(d);
                return;
            }
            spans.insert(name.name.clone(), name.span);
            items.insert(name.name.clone(), v);
        };
        for (alias, m, span) in &parsed.imports {
            match alias {
                Some(a) => {
                    let ident = ast::Ident {
                        name: a.clone(),
                        span: *span,
                    };
                    define(
                        e,
                        &ident,
                        Value::Module(*m),
                        format!("module {m}"),
                        &mut items,
                    );
                }
                None => {
                    let mut names: Vec<(String, Value)> = e.modules[*m]
                        .items
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    names.sort_by(|a, b| a.0.cmp(&b.0));
                    for (k, v) in names {
                        let origin = e.modules[*m].origins.get(&k).cloned().unwrap_or_default();
                        let ident = ast::Ident {
                            name: k,
                            span: *span,
                        };
                        define(e, &ident, v, origin, &mut items);
                    }
                }
            }
        }
        for item in &parsed.ast.items {
            match item {
                Item::Fn(f) => define(
                    e,
                    &f.name,
                    Value::Callable(Callable::Fn {
                        module: index,
                        def: Rc::new(f.clone()),
                    }),
                    format!("{index}@{}", f.name.span.start),
                    &mut items,
                ),
                Item::Block(b) => define(
                    e,
                    &b.name,
                    Value::Callable(Callable::Block {
                        module: index,
                        def: Rc::new(b.clone()),
                    }),
                    format!("{index}@{}", b.name.span.start),
                    &mut items,
                ),
                Item::Model(m) => define(
                    e,
                    &m.name,
                    Value::Callable(Callable::Model {
                        module: index,
                        def: Rc::new(m.clone()),
                    }),
                    format!("{index}@{}", m.name.span.start),
                    &mut items,
                ),
                Item::Variant(v) => define(
                    e,
                    &v.name,
                    Value::Callable(Callable::Variant {
                        module: index,
                        def: Rc::new(v.clone()),
                    }),
                    format!("{index}@{}", v.name.span.start),
                    &mut items,
                ),
                Item::Let { pat, .. } => {
                    fn idents(p: &ast::Pattern, out: &mut Vec<ast::Ident>) {
                        match p {
                            ast::Pattern::Ident(i) => out.push(i.clone()),
                            ast::Pattern::Wildcard(_) => {}
                            ast::Pattern::Tuple(ps, _) => ps.iter().for_each(|p| idents(p, out)),
                        }
                    }
                    let mut names = Vec::new();
                    idents(pat, &mut names);
                    for n in names {
                        // Only checked for duplicates here: the name is bound when its `let`
                        // is evaluated, in order, so a use before it is an unknown name.
                        define(
                            e,
                            &n,
                            Value::Poison,
                            format!("{index}@{}", n.span.start),
                            &mut items,
                        );
                        if matches!(items.get(&n.name), Some(Value::Poison)) {
                            items.remove(&n.name);
                            pending.insert(n.name.clone());
                        }
                    }
                }
                Item::Import { .. } => {}
            }
        }
        Module {
            file: parsed.file,
            items,
            pending,
            origins,
        }
    }

    fn eval_lets(&self, e: &mut Elab, index: usize, parsed: &Parsed) {
        for item in &parsed.ast.items {
            if let Item::Let { pat, value, .. } = item {
                let mut ctx = Ctx::new(index, BodyKind::Fn);
                let v = e.eval(&mut ctx, value, Hint::None).unwrap_or(Value::Poison);
                if e.bind_pattern(&mut ctx, pat, v).is_err() {
                    continue;
                }
                for frame in ctx.frames {
                    for (k, v) in frame {
                        e.modules[index].pending.remove(&k);
                        e.modules[index].items.insert(k, v);
                    }
                }
            }
        }
    }

    /// Runs a model (following variant chains), binding `overrides` over its defaults.
    fn run_model(&self, e: &mut Elab, entry: Callable, overrides: Vec<ArgValue>, depth: usize) {
        match entry {
            Callable::Variant { module, def } => {
                if depth > 16 {
                    e.error(
                        Phase::Resolution,
                        codes::UNKNOWN_MODEL,
                        def.name.span,
                        "model variants refer to each other in a cycle",
                        "in this variant",
                    );
                    return;
                }
                let base = match e.modules[module].get(&def.base.name) {
                    Some(Value::Callable(
                        c @ (Callable::Model { .. } | Callable::Variant { .. }),
                    )) => c,
                    _ => {
                        let models: Vec<String> = self.models();
                        let mut d = Diagnostic::new(
                            Phase::Resolution,
                            codes::UNKNOWN_MODEL,
                            format!("`{}` is not a model", def.base.name),
                        )
                        .at(def.base.span, "a variant must name a model");
                        if let Some(s) =
                            did_you_mean(&def.base.name, models.iter().map(String::as_str))
                        {
                            d = d.with_help(format!("did you mean `{s}`?"));
                        }
                        e.report(d);
                        return;
                    }
                };
                let mut ctx = Ctx::new(module, BodyKind::Fn);
                // Overrides that name the variant's own parameters bind them; the rest pass on.
                let (own, overrides): (Vec<ArgValue>, Vec<ArgValue>) =
                    overrides.into_iter().partition(|o| {
                        def.params
                            .iter()
                            .any(|p| o.name.as_deref() == Some(&p.name.name))
                    });
                if e.bind_params(&mut ctx, &def.name.name, &def.params, own, def.name.span)
                    .is_err()
                {
                    return;
                }
                let mut args = Vec::new();
                for a in &def.args {
                    let (name, expr) = match &a.kind {
                        ast::ArgKind::Keyword(k, v) => (Some(k.name.clone()), v),
                        ast::ArgKind::Positional(v) | ast::ArgKind::Spread(v) => (None, v),
                    };
                    let Ok(value) = e.eval(&mut ctx, expr, Hint::None) else {
                        return;
                    };
                    args.push(ArgValue {
                        name,
                        value,
                        span: a.span,
                        origin: None,
                    });
                }
                // Outer overrides win over this variant's settings.
                args.retain(|a| {
                    !overrides
                        .iter()
                        .any(|o| o.name.is_some() && o.name == a.name)
                });
                args.extend(overrides);
                self.run_model(e, base, args, depth + 1);
            }
            Callable::Model { module, def } => {
                let mut ctx = Ctx::new(module, BodyKind::Model);
                if e.bind_params(
                    &mut ctx,
                    &def.name.name,
                    &def.params,
                    overrides,
                    def.name.span,
                )
                .is_err()
                {
                    return;
                }
                let _ = e.exec_body(&mut ctx, &def.body);
            }
            _ => unreachable!("run_model is given models and variants only"),
        }
    }
}

/// `text`, or where it is long the 30 characters either side of byte `at`, elided with `…`.
fn excerpt(text: &str, at: usize) -> String {
    const SIDE: usize = 30;
    if text.chars().count() <= 2 * SIDE {
        return text.to_string();
    }
    let before = text[..at]
        .chars()
        .rev()
        .take(SIDE)
        .map(char::len_utf8)
        .sum::<usize>();
    let after = text[at..]
        .chars()
        .take(SIDE)
        .map(char::len_utf8)
        .sum::<usize>();
    let (start, end) = (at - before, at + after);
    let open = if start > 0 { "…" } else { "" };
    let close = if end < text.len() { "…" } else { "" };
    format!("{open}{}{close}", &text[start..end])
}

/// Lexically normalised path (resolves `.` and `..`), used to recognise a file imported twice.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
