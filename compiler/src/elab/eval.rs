//! The evaluator: runs a model body at compile time, unrolling loops and inlining blocks,
//! and emits one Graph IR node per op application.
//!
//! Errors are pushed to `diags` and the failing expression becomes [`Value::Poison`], so that
//! evaluation continues and all independent mistakes of a file are reported in one run.

use super::builtins;
use super::value::{ArgValue, Callable, Hint, Layer, LayerKind, Segment, Value};
use super::{codes, Module};
use crate::ir::{DType, Graph, Node, NodeKind, ValueId};
use crate::ops::{self, ArgType, Attr, Attrs, Default, Init, OpDef, ParamKind, Shape};
use bbc_grammar::ast::*;
use bbc_grammar::{did_you_mean, Diagnostic, Frame, Phase, SourceMap, Span};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// Marks an error that has already been reported.
#[derive(Debug)]
pub struct Reported;

pub type R<T> = Result<T, Reported>;

/// Limits that keep elaboration of any input finite and small.
pub const MAX_STEPS: u64 = 5_000_000;
pub const MAX_DEPTH: usize = 64;
pub const MAX_LIST: usize = 1_000_000;
pub const MAX_NESTING: usize = 100;
pub const MAX_NODES: usize = 200_000;
pub const MAX_NUMEL: u64 = 1 << 31;
pub const MAX_ARG_INT: u64 = (1 << 31) - 1;

/// Where a parameter key was declared, for duplicate and checkpoint diagnostics.
#[derive(Clone, Debug)]
pub struct ParamOrigin {
    pub node: ValueId,
    pub span: Span,
    pub chain: Vec<Frame>,
    /// The layer applications active at declaration, as (layer id, application number).
    apps: Vec<(u32, u32)>,
}

/// Evaluation state of one function/block/model body.
pub struct Ctx {
    pub module: usize,
    pub frames: Vec<HashMap<String, Value>>,
    pub returned: Option<Value>,
    /// What this body is, for statements only valid in some bodies.
    pub kind: BodyKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    Model,
    Block,
    Fn,
}

impl Ctx {
    pub fn new(module: usize, kind: BodyKind) -> Ctx {
        Ctx {
            module,
            frames: vec![HashMap::new()],
            returned: None,
            kind,
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.frames.iter().rev().find_map(|f| f.get(name))
    }

    pub fn set(&mut self, name: &str, value: Value) {
        for frame in self.frames.iter_mut().rev() {
            if let Some(slot) = frame.get_mut(name) {
                *slot = value;
                return;
            }
        }
        self.frames
            .last_mut()
            .expect("a context always has a frame")
            .insert(name.to_string(), value);
    }

    fn locals(&self) -> HashMap<String, Value> {
        let mut all = HashMap::new();
        for frame in &self.frames {
            all.extend(frame.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        all
    }
}

/// An op call's arguments matched to its signature.
struct BoundOpArgs {
    /// Per tensor argument, its values; `None` where it was not given.
    tensors: Vec<Option<Vec<Operand>>>,
    attrs: Attrs,
    /// A tensor argument is missing: the call is a partial application (a layer value).
    missing_tensor: bool,
}

/// A value given for a tensor argument: a tensor, or a number the argument takes
/// ([`ops::ArgSpec::number`]), made a scalar tensor only when the op is applied (a partial
/// application adds no node).
enum Operand {
    Tensor(ValueId),
    Number(f64, Span),
}

/// What a tensor argument takes, for diagnostics.
fn tensor_kind(spec: &ops::ArgSpec) -> &'static str {
    match spec.ty {
        ArgType::Tensors => "a list of tensors",
        _ if spec.number => "a tensor or a number",
        _ => "a tensor",
    }
}

/// State of a `seq` body being applied: the running value and the next element index.
struct SeqState {
    current: Value,
    index: usize,
}

pub struct Elab<'s> {
    pub sources: &'s SourceMap,
    pub modules: Vec<Module>,
    pub graph: Graph,
    pub diags: Vec<Diagnostic>,
    pub params: HashMap<String, ParamOrigin>,
    /// Named size parameters (`--dim`) and whether a model input used them.
    pub dims: HashMap<String, (i64, bool)>,
    /// Names of the size parameters the model's inputs declare, for "did you mean".
    pub size_params: Vec<String>,
    path: Vec<Segment>,
    /// Block calls and layer applications (`true`) and loop iterations (`false`); only the
    /// calls are recorded on IR nodes, all of them in diagnostics.
    chain: Vec<(Frame, bool)>,
    names: HashMap<String, usize>,
    /// Every value name in the graph (a set, so naming stays O(1) per value).
    taken: HashSet<String>,
    output_names: HashSet<String>,
    layer_apps: Vec<(u32, u32)>,
    layer_counts: HashMap<u32, u32>,
    next_layer: u32,
    steps: u64,
    depth: usize,
    step_limit_hit: bool,
}

impl<'s> Elab<'s> {
    pub fn new(
        sources: &'s SourceMap,
        modules: Vec<Module>,
        dims: HashMap<String, i64>,
    ) -> Elab<'s> {
        Elab {
            sources,
            modules,
            graph: Graph::default(),
            diags: Vec::new(),
            params: HashMap::new(),
            dims: dims.into_iter().map(|(k, v)| (k, (v, false))).collect(),
            size_params: Vec::new(),
            path: Vec::new(),
            chain: Vec::new(),
            names: HashMap::new(),
            taken: HashSet::new(),
            output_names: HashSet::new(),
            layer_apps: Vec::new(),
            layer_counts: HashMap::new(),
            next_layer: 0,
            steps: 0,
            depth: 0,
            step_limit_hit: false,
        }
    }

    // ----- diagnostics -----------------------------------------------------------------

    pub fn error(
        &mut self,
        phase: Phase,
        code: &'static str,
        span: Span,
        msg: impl Into<String>,
        label: impl Into<String>,
    ) -> Reported {
        let d = Diagnostic::new(phase, code, msg).at(span, label);
        self.report(d)
    }

    pub fn report(&mut self, mut d: Diagnostic) -> Reported {
        if d.chain.is_empty() {
            d.chain = self.diagnostic_chain();
        }
        self.diags.push(d);
        Reported
    }

    /// The current chain for a diagnostic, innermost first, with runs of one repeated frame
    /// (deep recursion) collapsed into one note.
    fn diagnostic_chain(&self) -> Vec<Frame> {
        let mut out: Vec<Frame> = Vec::new();
        let mut repeats = 0;
        for (frame, _) in self.chain.iter().rev() {
            if out.last() == Some(frame) {
                repeats += 1;
                continue;
            }
            if repeats > 0 {
                if let Some(last) = out.last_mut() {
                    last.what = format!("{} ({repeats} more times)", last.what);
                }
                repeats = 0;
            }
            out.push(frame.clone());
        }
        if repeats > 0 {
            if let Some(last) = out.last_mut() {
                last.what = format!("{} ({repeats} more times)", last.what);
            }
        }
        out
    }

    fn tick(&mut self, span: Span) -> R<()> {
        self.charge(1, span)
    }

    /// Counts `n` units of work (an evaluation step, or an element allocated or visited)
    /// against the elaboration budget, so that no spec can run or allocate without end.
    pub fn charge(&mut self, n: u64, span: Span) -> R<()> {
        self.steps = self.steps.saturating_add(n);
        if self.steps > MAX_STEPS {
            if !self.step_limit_hit {
                self.step_limit_hit = true;
                self.error(
                    Phase::Elaboration,
                    codes::LIMIT,
                    span,
                    format!("elaboration exceeded {MAX_STEPS} evaluation steps"),
                    "still evaluating here",
                );
            }
            return Err(Reported);
        }
        Ok(())
    }

    // ----- names and paths -------------------------------------------------------------

    fn check_segment(&mut self, seg: &str, span: Span) -> R<()> {
        if seg.is_empty() || !seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(self.error(
                Phase::Elaboration,
                codes::BAD_PATH,
                span,
                format!("`{seg}` is not a valid parameter path segment"),
                "path segments are letters, digits and `_`, separated by `.`",
            ));
        }
        Ok(())
    }

    /// Splits a dotted path template result into checked segments.
    fn segments(&mut self, path: &str, span: Span) -> R<Vec<String>> {
        let segs: Vec<String> = path.split('.').map(str::to_string).collect();
        for s in &segs {
            self.check_segment(s, span)?;
        }
        Ok(segs)
    }

    fn joined(path: &[Segment]) -> String {
        path.iter()
            .map(|s| match s {
                Segment::Name(n) => n.as_str(),
                Segment::Unnamed(_) => "?",
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The path segments a call named by `hint` adds.
    fn hint_segments(hint: &Hint, span: Span) -> Vec<Segment> {
        match hint {
            Hint::None => vec![Segment::Unnamed(span)],
            Hint::Anonymous => vec![],
            Hint::Path(p) => p.iter().map(|s| Segment::Name(s.clone())).collect(),
        }
    }

    /// A unique value name under the current path.
    fn fresh_name(&mut self, leaf: &str) -> String {
        let mut base = Self::joined(&self.path);
        if !leaf.is_empty() {
            if !base.is_empty() {
                base.push('.');
            }
            base.push_str(leaf);
        }
        self.unique(base)
    }

    fn unique(&mut self, base: String) -> String {
        let count = self.names.entry(base.clone()).or_insert(0);
        *count += 1;
        if *count == 1 && !self.taken.contains(&base) {
            base
        } else {
            let n = *count - 1;
            self.unique(format!("{base}_{n}"))
        }
    }

    /// Gives a value built from several ops the name its binding asked for.
    pub fn name_value(&mut self, id: ValueId, hint: &Hint) {
        if let Hint::Path(p) = hint {
            let name = self.fresh_name(&p.join("."));
            self.taken.insert(name.clone());
            self.graph.nodes[id].name = name;
        }
    }

    fn location(&self, span: Span) -> bbc_grammar::Location {
        self.sources.location(span)
    }

    fn add_node(
        &mut self,
        name: String,
        kind: NodeKind,
        shape: Shape,
        span: Span,
        inputs: &[ValueId],
    ) -> R<ValueId> {
        if self.graph.nodes.node_count() >= MAX_NODES {
            return Err(self.error(
                Phase::Elaboration,
                codes::LIMIT,
                span,
                format!("the graph exceeds {MAX_NODES} values"),
                "while adding this value",
            ));
        }
        let node = Node {
            name,
            kind,
            shape,
            dtype: DType::F32,
            loc: Some(self.location(span)),
            chain: self
                .chain
                .iter()
                .rev()
                .filter(|(_, call)| *call)
                .map(|(f, _)| self.location(f.span))
                .collect(),
        };
        self.taken.insert(node.name.clone());
        Ok(self.graph.add(node, inputs))
    }

    pub fn shape_of(&self, v: ValueId) -> &Shape {
        &self.graph.node(v).shape
    }

    fn check_numel(&mut self, shape: &[usize], span: Span, what: &str) -> R<()> {
        // Counted in u128: the product of up to four 64-bit extents still fits, so the
        // message states the true count.
        let n = shape
            .iter()
            .try_fold(1u128, |n, &d| n.checked_mul(d as u128));
        if n.is_none_or(|n| n > u128::from(MAX_NUMEL)) {
            let count = n.map_or_else(|| "more than 2^128".to_string(), |n| n.to_string());
            return Err(self.error(
                Phase::Shape,
                codes::TOO_LARGE,
                span,
                format!("{what} of shape {shape:?} has {count} elements, more than the limit of {MAX_NUMEL}"),
                "too large",
            ));
        }
        Ok(())
    }

    // ----- parameters ------------------------------------------------------------------

    /// Declares (or, when a layer value is re-applied, reuses) the parameter `key`.
    fn declare_param(
        &mut self,
        key_path: &[Segment],
        kind: ParamKind,
        init: Init,
        shape: Shape,
        span: Span,
    ) -> R<ValueId> {
        if let Some(unnamed) = key_path.iter().find_map(|s| match s {
            Segment::Unnamed(sp) => Some(*sp),
            _ => None,
        }) {
            let leaf = match key_path.last() {
                Some(Segment::Name(n)) => n.as_str(),
                _ => "?",
            };
            let mut d = Diagnostic::new(Phase::Elaboration, codes::UNNAMED, "parameterised call needs a name")
                .at(unnamed, format!("this call owns parameters (`{leaf}`, ...) but has no name"))
                .with_help("bind it (`name = ...;`) or tag it (`... @\"name\"`); the name becomes its state_dict path");
            if span != unnamed {
                d = d.with_secondary(span, format!("`{leaf}` is declared here"));
            }
            return Err(self.report(d));
        }
        let key = Self::joined(key_path);
        if key.is_empty() {
            return Err(self.error(
                Phase::Elaboration,
                codes::UNNAMED,
                span,
                "a parameter needs a name",
                "empty parameter path",
            ));
        }
        self.check_numel(&shape, span, &format!("parameter `{key}`"))?;
        if let Some(prev) = self.params.get(&key).cloned() {
            let shared = prev
                .apps
                .iter()
                .any(|(id, n)| self.layer_apps.iter().any(|(cid, cn)| cid == id && cn != n));
            let prev_shape = self.graph.node(prev.node).shape.clone();
            if shared && prev_shape == shape {
                return Ok(prev.node);
            }
            if shared {
                let d = Diagnostic::new(
                    Phase::Shape,
                    codes::SHAPE,
                    format!("a shared layer is applied to inputs of different shapes: `{key}` would be {shape:?} here but is {prev_shape:?}"),
                )
                .at(span, format!("needs `{key}` of shape {shape:?}"))
                .with_secondary(prev.span, format!("first applied here, with `{key}` of shape {prev_shape:?}"))
                .with_help("a layer value shares its parameters across applications, so its inputs must agree in the sizes the parameters depend on");
                return Err(self.report(d));
            }
            let d = Diagnostic::new(Phase::Elaboration, codes::DUPLICATE_PATH, format!("parameter `{key}` is defined twice"))
                .at(span, "defined again here")
                .with_secondary(prev.span, "first defined here")
                .with_help("give one of the calls a different name or `@\"tag\"`; to share weights, bind a layer value once and apply it twice");
            return Err(self.report(d));
        }
        let node = self.add_node(
            key.clone(),
            NodeKind::Param { kind, init },
            shape,
            span,
            &[],
        )?;
        self.names.insert(key.clone(), 1);
        let origin = ParamOrigin {
            node,
            span,
            chain: self.diagnostic_chain(),
            apps: self.layer_apps.clone(),
        };
        self.params.insert(key, origin);
        Ok(node)
    }

    // ----- expressions -----------------------------------------------------------------

    pub fn lookup(&mut self, ctx: &Ctx, name: &str, span: Span) -> R<Value> {
        if let Some(v) = ctx.get(name) {
            return Ok(v.clone());
        }
        if let Some(v) = self.global(ctx.module, name) {
            return Ok(v);
        }
        if builtins::is_builtin(name) {
            return Ok(Value::Callable(Callable::Builtin(builtins::canonical(
                name,
            ))));
        }
        if let Some(op) = ops::lookup(name) {
            return Ok(Value::Callable(Callable::Op(op)));
        }
        let mut candidates: Vec<String> =
            ctx.frames.iter().flat_map(|f| f.keys().cloned()).collect();
        candidates.extend(self.modules[ctx.module].names());
        candidates.extend(builtins::NAMES.iter().map(|s| s.to_string()));
        candidates.extend(ops::table().map(|o| o.name.to_string()));
        let mut d = Diagnostic::new(
            Phase::Resolution,
            codes::UNKNOWN_NAME,
            format!("unknown name `{name}`"),
        )
        .at(span, "not found in this scope");
        if self.modules[ctx.module].is_pending(name) {
            let d = d.with_help(format!(
                "`{name}` is defined by a later top-level `let`; move that `let` above this use"
            ));
            return Err(self.report(d));
        }
        if let Some(s) = did_you_mean(name, candidates.iter().map(String::as_str)) {
            d = d.with_help(format!("did you mean `{s}`?"));
        }
        Err(self.report(d))
    }

    fn global(&self, module: usize, name: &str) -> Option<Value> {
        self.modules[module].get(name)
    }

    pub fn eval(&mut self, ctx: &mut Ctx, e: &Expr, hint: Hint) -> R<Value> {
        self.tick(e.span)?;
        match &e.kind {
            ExprKind::Int(i) => Ok(Value::Int(*i)),
            ExprKind::Float(f) => Ok(Value::Float(*f)),
            ExprKind::Bool(b) => Ok(Value::Bool(*b)),
            ExprKind::None => Ok(Value::None),
            ExprKind::Str(s) => Ok(Value::str(self.interpolate(ctx, s)?)),
            ExprKind::Ident(name) => self.lookup(ctx, name, e.span),
            ExprKind::List(items) => {
                let v = Value::list(self.eval_all(ctx, items)?);
                self.check_size(&v, e.span)?;
                Ok(v)
            }
            ExprKind::Tuple(items) => {
                let v = Value::Tuple(Rc::new(self.eval_all(ctx, items)?));
                self.check_size(&v, e.span)?;
                Ok(v)
            }
            ExprKind::Comprehension { elem, clauses } => {
                let mut out = Vec::new();
                ctx.frames.push(HashMap::new());
                let r = self.comprehension(ctx, elem, clauses, &mut out);
                ctx.frames.pop();
                r?;
                let v = Value::list(out);
                self.check_size(&v, e.span)?;
                Ok(v)
            }
            ExprKind::Unary { op, expr } => {
                let v = self.eval(ctx, expr, Hint::None)?;
                self.unary(*op, v, e.span, hint)
            }
            ExprKind::Binary { op, lhs, rhs } => {
                if matches!(op, BinOp::And | BinOp::Or) {
                    let l = self.eval(ctx, lhs, Hint::None)?;
                    let lb = self.expect_bool(&l, lhs.span)?;
                    if (*op == BinOp::And && !lb) || (*op == BinOp::Or && lb) {
                        return Ok(Value::Bool(lb));
                    }
                    let r = self.eval(ctx, rhs, Hint::None)?;
                    return Ok(Value::Bool(self.expect_bool(&r, rhs.span)?));
                }
                // Both sides are evaluated even if one fails, to report both sides' mistakes.
                let l = self.eval(ctx, lhs, Hint::None);
                let r = self.eval(ctx, rhs, Hint::None);
                self.binary(*op, l?, r?, e.span, hint)
            }
            ExprKind::Call { callee, args } => {
                let f = self.eval(ctx, callee, Hint::None);
                let args = self.eval_args(ctx, args);
                self.call_value(ctx, f?, args?, e.span, hint)
            }
            ExprKind::Index { base, index } => {
                let b = self.eval(ctx, base, Hint::None)?;
                let i = self.eval(ctx, index, Hint::None)?;
                self.index(b, i, e.span)
            }
            ExprKind::Field { base, name } => {
                let b = self.eval(ctx, base, Hint::None)?;
                match b {
                    Value::Module(m) => self.global(m, &name.name).ok_or_else(|| {
                        let mut d = Diagnostic::new(
                            Phase::Resolution,
                            codes::UNKNOWN_NAME,
                            format!("module has no item `{}`", name.name),
                        )
                        .at(name.span, "not defined in the imported file");
                        let names = self.modules[m].names();
                        if let Some(s) = did_you_mean(&name.name, names.iter().map(String::as_str))
                        {
                            d = d.with_help(format!("did you mean `{s}`?"));
                        }
                        self.report(d)
                    }),
                    Value::Poison => Ok(Value::Poison),
                    other => Err(self.error(
                        Phase::Elaboration,
                        codes::TYPE,
                        e.span,
                        format!("{} has no field `{}`", other.a_type(), name.name),
                        "field access needs an imported module",
                    )),
                }
            }
            ExprKind::Pipe { lhs, rhs } => {
                let input = self.eval(ctx, lhs, Hint::None)?;
                self.pipe(ctx, input, rhs, e.span, hint)
            }
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => {
                let c = self.eval(ctx, cond, Hint::None)?;
                if self.expect_bool(&c, cond.span)? {
                    self.eval(ctx, then, hint)
                } else {
                    self.eval(ctx, otherwise, hint)
                }
            }
            ExprKind::Seq(body) => Ok(self.new_layer(
                LayerKind::Seq {
                    body: Rc::new(body.clone()),
                    module: ctx.module,
                    locals: ctx.locals(),
                },
                hint,
                e.span,
            )),
            ExprKind::Tagged { expr, tag } => {
                let hint = match tag {
                    None => Hint::Anonymous,
                    Some(t) => {
                        let s = self.interpolate(ctx, t)?;
                        Hint::Path(self.segments(&s, t.span)?)
                    }
                };
                self.eval(ctx, expr, hint)
            }
        }
    }

    /// Evaluates every expression, reporting each failure, and fails if any did.
    fn eval_all(&mut self, ctx: &mut Ctx, items: &[Expr]) -> R<Vec<Value>> {
        let results: Vec<R<Value>> = items
            .iter()
            .map(|i| self.eval(ctx, i, Hint::None))
            .collect();
        results.into_iter().collect()
    }

    /// Rejects compile-time values that are too large or too deeply nested to handle safely:
    /// lists may share sub-lists, so the size that matters (to printing, comparing, iterating)
    /// is the size of the tree, computed here in time linear in the distinct lists.
    pub fn check_size(&mut self, v: &Value, span: Span) -> R<()> {
        fn measure(
            v: &Value,
            depth: usize,
            memo: &mut HashMap<*const Vec<Value>, (u64, usize)>,
            visited: &mut u64,
        ) -> (u64, usize) {
            let items = match v {
                Value::List(items) | Value::Tuple(items) => items,
                Value::Str(s) => return (1 + s.len() as u64 / 64, 0),
                _ => return (1, 0),
            };
            if depth > MAX_NESTING {
                return (u64::MAX, depth);
            }
            if let Some(&m) = memo.get(&Rc::as_ptr(items)) {
                return m;
            }
            *visited += items.len() as u64;
            let mut size = 1u64;
            let mut deepest = 0;
            for item in items.iter() {
                let (s, d) = measure(item, depth + 1, memo, visited);
                size = size.saturating_add(s);
                deepest = deepest.max(d);
            }
            let m = (size, deepest + 1);
            memo.insert(Rc::as_ptr(items), m);
            m
        }
        let mut visited = 0;
        let (size, depth) = measure(v, 0, &mut HashMap::new(), &mut visited);
        self.charge(visited, span)?;
        if depth > MAX_NESTING {
            return Err(self.error(
                Phase::Elaboration,
                codes::LIMIT,
                span,
                format!("value nested more than {MAX_NESTING} levels deep"),
                "built here",
            ));
        }
        if size > MAX_LIST as u64 {
            return Err(self.error(
                Phase::Elaboration,
                codes::LIMIT,
                span,
                format!("value too large: more than {MAX_LIST} elements in all"),
                "built here",
            ));
        }
        Ok(())
    }

    /// Strings are bounded like lists.
    pub fn check_str_len(&mut self, len: usize, span: Span) -> R<()> {
        self.charge(len as u64 / 16, span)?;
        if len > MAX_LIST {
            return Err(self.error(
                Phase::Elaboration,
                codes::LIMIT,
                span,
                format!("string too long: {len} bytes, at most {MAX_LIST}"),
                "built here",
            ));
        }
        Ok(())
    }

    fn new_layer(&mut self, kind: LayerKind, hint: Hint, span: Span) -> Value {
        self.next_layer += 1;
        Value::Layer(Rc::new(Layer {
            id: self.next_layer,
            kind,
            base: self.path.clone(),
            hint,
            span,
        }))
    }

    fn comprehension(
        &mut self,
        ctx: &mut Ctx,
        elem: &Expr,
        clauses: &[CompClause],
        out: &mut Vec<Value>,
    ) -> R<()> {
        let Some((first, rest)) = clauses.split_first() else {
            let v = self.eval(ctx, elem, Hint::None)?;
            out.push(v);
            if out.len() > MAX_LIST {
                return Err(self.error(
                    Phase::Elaboration,
                    codes::LIMIT,
                    elem.span,
                    "list too long",
                    "while building this list",
                ));
            }
            return Ok(());
        };
        match first {
            CompClause::If(c) => {
                let v = self.eval(ctx, c, Hint::None)?;
                if self.expect_bool(&v, c.span)? {
                    self.comprehension(ctx, elem, rest, out)?;
                }
            }
            CompClause::For { pat, iter } => {
                let it = self.eval(ctx, iter, Hint::None)?;
                for item in self.iterate(&it, iter.span)? {
                    self.tick(iter.span)?;
                    self.bind_pattern(ctx, pat, item)?;
                    self.comprehension(ctx, elem, rest, out)?;
                }
            }
        }
        Ok(())
    }

    pub fn interpolate(&mut self, ctx: &mut Ctx, s: &StrLit) -> R<String> {
        let mut out = String::new();
        for part in &s.parts {
            match part {
                StrPart::Text(t) => out.push_str(t),
                StrPart::Interp(e) => {
                    let v = self.eval(ctx, e, Hint::None)?;
                    if matches!(v, Value::Poison) {
                        return Err(Reported);
                    }
                    if matches!(v, Value::Tensor(_) | Value::Layer(_)) {
                        return Err(self.error(
                            Phase::Elaboration,
                            codes::TYPE,
                            e.span,
                            format!("cannot put a {} in a string", v.type_name()),
                            "not a compile-time value",
                        ));
                    }
                    out.push_str(&v.to_string());
                    self.check_str_len(out.len(), e.span)?;
                }
            }
        }
        Ok(out)
    }

    pub fn iterate(&mut self, v: &Value, span: Span) -> R<Vec<Value>> {
        match v {
            Value::List(items) | Value::Tuple(items) => Ok(items.to_vec()),
            Value::Str(s) => Ok(s.chars().map(|c| Value::str(c.to_string())).collect()),
            Value::Poison => Err(Reported),
            other => Err(self.error(
                Phase::Elaboration,
                codes::TYPE,
                span,
                format!("cannot iterate over {}", other.a_type()),
                "expected a list, tuple or range",
            )),
        }
    }

    pub fn expect_bool(&mut self, v: &Value, span: Span) -> R<bool> {
        match v {
            Value::Bool(b) => Ok(*b),
            Value::Poison => Err(Reported),
            other => Err(self.error(
                Phase::Elaboration,
                codes::TYPE,
                span,
                format!("expected bool, found {}", other.type_name()),
                "a condition must be a bool",
            )),
        }
    }

    pub fn expect_int(&mut self, v: &Value, span: Span, what: &str) -> R<i64> {
        match v {
            Value::Int(i) => Ok(*i),
            Value::Poison => Err(Reported),
            other => Err(self.error(
                Phase::Elaboration,
                codes::TYPE,
                span,
                format!("{what} must be an int, found {}", other.type_name()),
                format!("this is {}", other.a_type()),
            )),
        }
    }

    /// Evaluates call arguments; after a failed one the rest are still evaluated, so that
    /// their own mistakes are reported in the same run.
    fn eval_args(&mut self, ctx: &mut Ctx, args: &[Arg]) -> R<Vec<ArgValue>> {
        let mut out = Vec::new();
        let mut failed = false;
        for a in args {
            match &a.kind {
                ArgKind::Positional(e) => {
                    let Ok(value) = self.eval(ctx, e, Hint::None) else {
                        failed = true;
                        continue;
                    };
                    out.push(ArgValue {
                        name: None,
                        value,
                        span: a.span,
                        origin: None,
                    });
                }
                ArgKind::Keyword(k, e) => {
                    if out
                        .iter()
                        .any(|p: &ArgValue| p.name.as_deref() == Some(&k.name))
                    {
                        return Err(self.error(
                            Phase::Resolution,
                            codes::BAD_ARG,
                            k.span,
                            format!("argument `{}` given twice", k.name),
                            "repeated here",
                        ));
                    }
                    let Ok(value) = self.eval(ctx, e, Hint::None) else {
                        failed = true;
                        continue;
                    };
                    out.push(ArgValue {
                        name: Some(k.name.clone()),
                        value,
                        span: a.span,
                        origin: None,
                    });
                }
                ArgKind::Spread(e) => {
                    let Ok(v) = self.eval(ctx, e, Hint::None) else {
                        failed = true;
                        continue;
                    };
                    for item in self.iterate(&v, e.span)? {
                        out.push(ArgValue {
                            name: None,
                            value: item,
                            span: a.span,
                            origin: None,
                        });
                    }
                }
            }
        }
        if failed {
            return Err(Reported);
        }
        Ok(out)
    }

    fn pipe(
        &mut self,
        ctx: &mut Ctx,
        input: Value,
        rhs: &Expr,
        span: Span,
        hint: Hint,
    ) -> R<Value> {
        // Tags on the right-hand side name the call the pipe becomes.
        let (rhs, hint) = match &rhs.kind {
            ExprKind::Tagged { expr, tag } => {
                let h = match tag {
                    None => Hint::Anonymous,
                    Some(t) => {
                        let s = self.interpolate(ctx, t)?;
                        Hint::Path(self.segments(&s, t.span)?)
                    }
                };
                (&**expr, h)
            }
            _ => (rhs, hint),
        };
        if let ExprKind::Call { callee, args } = &rhs.kind {
            let f = self.eval(ctx, callee, Hint::None)?;
            let mut vals = vec![ArgValue {
                name: None,
                value: input,
                span,
                origin: None,
            }];
            vals.extend(self.eval_args(ctx, args)?);
            return self.call_value(ctx, f, vals, rhs.span, hint);
        }
        let f = self.eval(ctx, rhs, hint.clone())?;
        let arg = ArgValue {
            name: None,
            value: input,
            span,
            origin: None,
        };
        self.call_value(ctx, f, vec![arg], rhs.span, hint)
    }

    // ----- calls -----------------------------------------------------------------------

    pub fn call_value(
        &mut self,
        ctx: &mut Ctx,
        f: Value,
        args: Vec<ArgValue>,
        span: Span,
        hint: Hint,
    ) -> R<Value> {
        if args.iter().any(|a| contains_poison(&a.value)) {
            return Ok(Value::Poison);
        }
        match f {
            Value::Callable(c) => self.call(ctx, c, args, span, hint),
            Value::Layer(layer) => {
                if args.len() != 1 || args[0].name.is_some() {
                    return Err(self.error(
                        Phase::Elaboration,
                        codes::BAD_VALUE,
                        span,
                        "a layer value is applied to exactly one input",
                        format!("{} arguments given", args.len()),
                    ));
                }
                let input = args
                    .into_iter()
                    .next()
                    .map(|a| a.value)
                    .unwrap_or(Value::Poison);
                self.apply_layer(&layer, input, span)
            }
            Value::Poison => Ok(Value::Poison),
            other => Err(self.error(
                Phase::Elaboration,
                codes::TYPE,
                span,
                format!("{} is not callable", other.a_type()),
                "called here",
            )),
        }
    }

    pub fn call(
        &mut self,
        _ctx: &mut Ctx,
        c: Callable,
        args: Vec<ArgValue>,
        span: Span,
        hint: Hint,
    ) -> R<Value> {
        match c {
            Callable::Op(op) => self.call_op(op, args, span, hint),
            Callable::Builtin(name) => {
                // Names like `sum` and `max` are Python built-ins on lists and ops on tensors.
                if let Some(op) = ops::lookup(name) {
                    if args
                        .first()
                        .is_some_and(|a| matches!(a.value, Value::Tensor(_)))
                    {
                        return self.call_op(op, args, span, hint);
                    }
                }
                let v = builtins::call(self, name, args, span, hint)?;
                self.check_size(&v, span)?;
                Ok(v)
            }
            Callable::Fn { module, def } => self.call_fn(module, &def, args, span, hint),
            Callable::Block { module, def } => self.call_block(module, &def, args, span, hint),
            Callable::Model { .. } | Callable::Variant { .. } => Err(self.error(
                Phase::Elaboration,
                codes::TYPE,
                span,
                "a model cannot be called from a spec",
                "models are entry points; move the shared part into a `block`",
            )),
        }
    }

    fn enter(&mut self, what: String, span: Span) -> R<()> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(
                Phase::Elaboration,
                codes::LIMIT,
                span,
                format!("calls nested deeper than {MAX_DEPTH} levels"),
                "is a block or function calling itself without end?",
            ));
        }
        self.depth += 1;
        self.chain.push((Frame::call(what, span), true));
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
        self.chain.pop();
    }

    /// Matches arguments to an op's signature.
    fn bind_op_args(
        &mut self,
        op: &'static OpDef,
        args: &[ArgValue],
        span: Span,
    ) -> R<BoundOpArgs> {
        let mut slots: Vec<Option<&ArgValue>> = vec![None; op.args.len()];
        let mut next = 0;
        for a in args {
            match &a.name {
                Some(k) => {
                    let Some(i) = op.args.iter().position(|s| s.name == k) else {
                        let mut d = Diagnostic::new(
                            Phase::Resolution,
                            codes::BAD_ARG,
                            format!("`{}` has no argument `{k}`", op.name),
                        )
                        .at(a.span, "unknown keyword argument");
                        let names: Vec<&str> = op.args.iter().map(|s| s.name).collect();
                        d = match (pytorch_spelling(k), did_you_mean(k, names.iter().copied())) {
                            (Some(help), _) if op.arg(help).is_some() || help.starts_with(' ') => {
                                d.with_help(pytorch_help(k, help))
                            }
                            (_, Some(s)) => d.with_help(format!("did you mean `{s}`?")),
                            _ => d.with_help(format!("`{}` takes: {}", op.name, names.join(", "))),
                        };
                        return Err(self.report(d));
                    };
                    if slots[i].is_some() {
                        return Err(self.error(
                            Phase::Resolution,
                            codes::BAD_ARG,
                            a.span,
                            format!("argument `{k}` of `{}` given twice", op.name),
                            "already given by position",
                        ));
                    }
                    slots[i] = Some(a);
                }
                None => {
                    // An empty list counts as a (bad) tensor list, so `concat([])` reports
                    // the empty list rather than a wrong `axis`.
                    let is_tensor = matches!(a.value, Value::Tensor(_))
                        || a.value.items().is_some_and(|i| {
                            i.is_empty() || i.iter().any(|v| matches!(v, Value::Tensor(_)))
                        });
                    let is_number = matches!(a.value, Value::Int(_) | Value::Float(_));
                    // A non-tensor positional skips leading tensor slots: `conv2d(8, 3)` in a
                    // seq; a number fills a slot that takes one (`maximum(x, 0.0)`).
                    while next < op.args.len()
                        && (slots[next].is_some()
                            || (!is_tensor
                                && matches!(op.args[next].ty, ArgType::Tensor | ArgType::Tensors)
                                && !(is_number && op.args[next].number)))
                    {
                        next += 1;
                    }
                    if next >= op.args.len() {
                        // A number or list where a tensor slot is still open (`matmul(x, 2.0)`)
                        // is a wrong type, not one argument too many.
                        let open_tensor = op.args.iter().zip(&slots).find(|(spec, slot)| {
                            slot.is_none() && matches!(spec.ty, ArgType::Tensor | ArgType::Tensors)
                        });
                        if let (false, Some((spec, _))) = (is_tensor, open_tensor) {
                            let want = tensor_kind(spec);
                            return Err(
                                self.arg_type_error(op.name, spec.name, want, &a.value, a.span)
                            );
                        }
                        return Err(self.error(
                            Phase::Resolution,
                            codes::BAD_ARG,
                            a.span,
                            format!("too many arguments to `{}`", op.name),
                            format!("`{}` takes {} arguments", op.name, op.args.len()),
                        ));
                    }
                    slots[next] = Some(a);
                    next += 1;
                }
            }
        }
        let mut tensors = Vec::new();
        let mut attrs = Attrs::new();
        let mut missing_tensor = false;
        for (spec, slot) in op.args.iter().zip(&slots) {
            match (spec.ty, slot) {
                (ArgType::Tensor, Some(a)) => match (&a.value, a.value.as_f64()) {
                    (Value::Tensor(t), _) => tensors.push(Some(vec![Operand::Tensor(*t)])),
                    (_, Some(v)) if spec.number => {
                        tensors.push(Some(vec![Operand::Number(v, a.span)]))
                    }
                    (other, _) => {
                        let want = tensor_kind(spec);
                        return Err(self.arg_type_error(op.name, spec.name, want, other, a.span));
                    }
                },
                (ArgType::Tensors, Some(a)) => {
                    let items = match a.value.items() {
                        Some(items) if !items.is_empty() => items.to_vec(),
                        _ => {
                            return Err(self.arg_type_error(
                                op.name,
                                spec.name,
                                "a non-empty list of tensors",
                                &a.value,
                                a.span,
                            ))
                        }
                    };
                    let mut ids = Vec::new();
                    for v in items {
                        match v {
                            Value::Tensor(t) => ids.push(Operand::Tensor(t)),
                            other => {
                                return Err(self.arg_type_error(
                                    op.name,
                                    spec.name,
                                    "a list of tensors",
                                    &other,
                                    a.span,
                                ))
                            }
                        }
                    }
                    tensors.push(Some(ids));
                }
                (ArgType::Tensor | ArgType::Tensors, None) => {
                    missing_tensor = true;
                    tensors.push(None);
                }
                (_, Some(a)) => {
                    let attr = self.arg_attr(op.name, spec, &a.value, a.span)?;
                    attrs.insert(spec.name.to_string(), attr);
                }
                (_, None) => match spec.default {
                    Default::Required => {
                        if !missing_tensor {
                            return Err(self.error(
                                Phase::Elaboration,
                                codes::BAD_VALUE,
                                span,
                                format!("`{}` needs argument `{}`", op.name, spec.name),
                                format!("missing `{}=...`", spec.name),
                            ));
                        }
                    }
                    Default::SameAs(_) => {}
                    d => {
                        let attr = default_attr(spec.ty, d);
                        attrs.insert(spec.name.to_string(), attr);
                    }
                },
            }
        }
        for spec in op.args {
            if let Default::SameAs(other) = spec.default {
                if !attrs.contains_key(spec.name) {
                    if let Some(v) = attrs.get(other).cloned() {
                        attrs.insert(spec.name.to_string(), v);
                    }
                }
            }
        }
        Ok(BoundOpArgs {
            tensors,
            attrs,
            missing_tensor,
        })
    }

    fn arg_type_error(
        &mut self,
        op: &str,
        arg: &str,
        want: &str,
        got: &Value,
        span: Span,
    ) -> Reported {
        self.error(
            Phase::Elaboration,
            codes::TYPE,
            span,
            format!(
                "argument `{arg}` of `{op}` must be {want}, found {}",
                got.type_name()
            ),
            format!("this is {}", got.a_type()),
        )
    }

    fn arg_attr(&mut self, op: &str, spec: &ops::ArgSpec, v: &Value, span: Span) -> R<Attr> {
        // Sizes, strides, paddings and axes beyond 2^31 are mistakes; rejecting them here
        // keeps every shape rule free of overflow.
        let out_of_range = match v {
            Value::Int(i) => i.unsigned_abs() > MAX_ARG_INT,
            _ => v.items().is_some_and(|items| {
                items
                    .iter()
                    .any(|x| matches!(x, Value::Int(i) if i.unsigned_abs() > MAX_ARG_INT))
            }),
        };
        if out_of_range {
            return Err(self.error(
                Phase::Elaboration,
                codes::BAD_VALUE,
                span,
                format!("argument `{}` of `{op}` is out of range", spec.name),
                format!("integer arguments must lie within ±{MAX_ARG_INT}"),
            ));
        }
        let ints = |v: &Value| -> Option<Vec<i64>> {
            match v {
                Value::Int(i) => Some(vec![*i]),
                _ => v
                    .items()?
                    .iter()
                    .map(|x| match x {
                        Value::Int(i) => Some(*i),
                        _ => None,
                    })
                    .collect(),
            }
        };
        let attr = match (spec.ty, v) {
            (ArgType::Int | ArgType::OptInt, Value::Int(i)) => Some(Attr::Int(*i)),
            (ArgType::Float | ArgType::OptFloat, Value::Int(i)) => Some(Attr::Float(*i as f64)),
            (ArgType::Float | ArgType::OptFloat, Value::Float(f)) => Some(Attr::Float(*f)),
            (ArgType::Bool, Value::Bool(b)) => Some(Attr::Bool(*b)),
            (ArgType::Str, Value::Str(s)) => {
                if !spec.choices.is_empty() && !spec.choices.contains(&&**s) {
                    return Err(self.error(
                        Phase::Elaboration,
                        codes::BAD_ARG,
                        span,
                        format!(
                            "argument `{}` of `{op}` must be one of {}",
                            spec.name,
                            spec.choices
                                .iter()
                                .map(|c| format!("\"{c}\""))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        format!("\"{s}\" is not accepted"),
                    ));
                }
                Some(Attr::Str(s.to_string()))
            }
            (ArgType::OptInt | ArgType::OptPair | ArgType::OptFloat, Value::None) => {
                Some(Attr::None)
            }
            (ArgType::Ints, v) => ints(v).map(Attr::Ints),
            (ArgType::Pair | ArgType::OptPair, Value::Int(i)) => Some(Attr::Ints(vec![*i, *i])),
            (ArgType::Pair | ArgType::OptPair, v) => {
                ints(v).filter(|x| x.len() == 2).map(Attr::Ints)
            }
            _ => None,
        };
        attr.ok_or_else(|| {
            let want = match spec.ty {
                ArgType::Int => "an int",
                ArgType::Float => "a number",
                ArgType::Bool => "a bool",
                ArgType::Str => "a string",
                ArgType::Ints => "an int or a list of ints",
                ArgType::Pair => "an int or a pair of ints",
                ArgType::OptInt => "an int or none",
                ArgType::OptPair => "an int, a pair of ints, or none",
                ArgType::OptFloat => "a number or none",
                ArgType::Tensor | ArgType::Tensors => "a tensor",
            };
            // A list of ints with something else in it: name the element, not the list.
            let element = matches!(spec.ty, ArgType::Ints | ArgType::Pair | ArgType::OptPair)
                .then(|| v.items())
                .flatten()
                .and_then(|items| {
                    items
                        .iter()
                        .enumerate()
                        .find(|(_, x)| !matches!(x, Value::Int(_)))
                });
            let Some((i, item)) = element else {
                return self.arg_type_error(op, spec.name, want, v, span);
            };
            let mut d = Diagnostic::new(
                Phase::Elaboration,
                codes::TYPE,
                format!(
                    "argument `{}` of `{op}` must be {want}, but element {i} is {}",
                    spec.name,
                    item.a_type()
                ),
            )
            .at(span, format!("element {i} is {}", item.a_type()));
            if let Value::Float(_) = item {
                // `16 / 2` is the usual way to get here.
                d = d.with_help(
                    "`/` always gives a float; `//` divides ints to an int, and `int(...)` \
                     truncates a float",
                );
            }
            self.report(d)
        })
    }

    /// Applies an op: binds arguments, checks shapes, declares owned parameters, adds the node.
    pub fn call_op(
        &mut self,
        op: &'static OpDef,
        args: Vec<ArgValue>,
        span: Span,
        hint: Hint,
    ) -> R<Value> {
        let BoundOpArgs {
            tensors,
            attrs,
            missing_tensor: missing,
        } = self.bind_op_args(op, &args, span)?;
        if missing {
            return Ok(self.new_layer(
                LayerKind::Partial {
                    callee: Callable::Op(op),
                    args,
                },
                hint,
                span,
            ));
        }
        let mut inputs = Vec::new();
        for x in tensors.into_iter().flatten().flatten() {
            inputs.push(match x {
                Operand::Tensor(t) => t,
                Operand::Number(v, at) => self.scalar_node(v, at)?,
            });
        }
        self.emit_op(op, attrs, &inputs, span, hint)
    }

    /// Adds a node applying `op` to `inputs` (tensor arguments only; owned params are added).
    pub fn emit_op(
        &mut self,
        op: &'static OpDef,
        attrs: Attrs,
        inputs: &[ValueId],
        span: Span,
        hint: Hint,
    ) -> R<Value> {
        let shapes: Vec<Shape> = inputs.iter().map(|&i| self.shape_of(i).clone()).collect();
        let shape = match (op.shape)(&attrs, &shapes) {
            Ok(s) => s,
            Err(msg) => {
                let operands: Vec<String> = shapes.iter().map(|s| format!("{s:?}")).collect();
                let d = Diagnostic::new(
                    Phase::Shape,
                    codes::SHAPE,
                    format!("shape error in `{}`", op.name),
                )
                .at(
                    span,
                    msg.strip_prefix(&format!("{}: ", op.name)).unwrap_or(&msg),
                )
                .with_note(format!("operand shapes: {}", operands.join(", ")));
                return Err(self.report(d));
            }
        };
        self.check_numel(&shape, span, "result")?;
        let params = (op.params)(&attrs, &shapes);
        let mut all_inputs = inputs.to_vec();
        let name = if params.is_empty() {
            match &hint {
                Hint::Path(p) => self.fresh_name(&p.join(".")),
                _ => self.fresh_name(op.name),
            }
        } else {
            let mut prefix = self.path.clone();
            prefix.extend(Self::hint_segments(&hint, span));
            for p in params {
                let mut key = prefix.clone();
                key.push(Segment::Name(p.name.to_string()));
                all_inputs.push(self.declare_param(&key, p.kind, p.init, p.shape, span)?);
            }
            let base = Self::joined(&prefix);
            let base = if base.is_empty() {
                op.name.to_string()
            } else {
                base
            };
            self.unique(base)
        };
        let id = self.add_node(name, NodeKind::Op { op, attrs }, shape, span, &all_inputs)?;
        Ok(Value::Tensor(id))
    }

    /// Calls a compile-time function. Its body is the value of the call, so it takes the
    /// call's name: `l = make_layer(8)` names a `seq` the body builds `l`.
    fn call_fn(
        &mut self,
        module: usize,
        def: &FnDef,
        args: Vec<ArgValue>,
        span: Span,
        hint: Hint,
    ) -> R<Value> {
        let mut ctx = Ctx::new(module, BodyKind::Fn);
        self.enter(format!("function `{}`", def.name.name), span)?;
        let r = self
            .bind_params(&mut ctx, &def.name.name, &def.params, args, span)
            .and_then(|()| self.eval(&mut ctx, &def.body, hint))
            .and_then(|v| {
                if let Some(ty) = &def.ret {
                    self.check_type(&mut ctx, &v, ty, def.body.span, "result")?;
                }
                Ok(v)
            });
        self.leave();
        r
    }

    fn call_block(
        &mut self,
        module: usize,
        def: &Rc<BlockDef>,
        args: Vec<ArgValue>,
        span: Span,
        hint: Hint,
    ) -> R<Value> {
        // A block whose leading tensor parameter is not given is a layer value.
        let first_is_tensor = def
            .params
            .first()
            .is_some_and(|p| matches!(p.ty.as_ref().map(|t| &t.kind), Some(TypeKind::Tensor(_))));
        let has_tensor_arg = args.iter().any(|a| {
            matches!(a.value, Value::Tensor(_))
                || a.value
                    .items()
                    .is_some_and(|i| i.iter().any(|v| matches!(v, Value::Tensor(_))))
        });
        let first_named = def
            .params
            .first()
            .is_some_and(|p| args.iter().any(|a| a.name.as_deref() == Some(&p.name.name)));
        if first_is_tensor && !has_tensor_arg && !first_named {
            let callee = Callable::Block {
                module,
                def: def.clone(),
            };
            return Ok(self.new_layer(LayerKind::Partial { callee, args }, hint, span));
        }
        // Argument errors are reported at the call, before entering the block.
        let mut ctx = Ctx::new(module, BodyKind::Block);
        self.bind_params(&mut ctx, &def.name.name, &def.params, args, span)?;
        self.enter(format!("block `{}`", def.name.name), span)?;
        let saved = self.path.len();
        self.path.extend(Self::hint_segments(&hint, span));
        let r = self.exec_body(&mut ctx, &def.body).and_then(|()| {
            let Some(v) = ctx.returned.take() else {
                if def.ret.is_none() {
                    return Ok(Value::None);
                }
                let d = Diagnostic::new(
                    Phase::Elaboration,
                    codes::MISPLACED,
                    format!("block `{}` ends without `return`", def.name.name),
                )
                .at(def.name.span, "declares a result but never returns one")
                .with_help("end the body with `return expr;`");
                return Err(self.report(d));
            };
            if let Some(ty) = &def.ret {
                self.check_type(&mut ctx, &v, ty, span, "result")?;
            }
            Ok(v)
        });
        self.path.truncate(saved);
        self.leave();
        r
    }

    /// Binds call arguments to formal parameters (positional, keyword, defaults) and checks
    /// their declared types, binding shape-pattern dimensions.
    pub fn bind_params(
        &mut self,
        ctx: &mut Ctx,
        callee: &str,
        params: &[ParamDecl],
        args: Vec<ArgValue>,
        span: Span,
    ) -> R<()> {
        for (i, p) in params.iter().enumerate() {
            if let Some(first) = params[..i].iter().find(|q| q.name.name == p.name.name) {
                let d = Diagnostic::new(
                    Phase::Resolution,
                    codes::DUPLICATE_ITEM,
                    format!(
                        "parameter `{}` of `{callee}` is declared twice",
                        p.name.name
                    ),
                )
                .at(p.name.span, "declared again here")
                .with_secondary(first.name.span, "first declared here");
                return Err(self.report(d));
            }
        }
        let mut given: Vec<Option<ArgValue>> = vec![None; params.len()];
        let mut next = 0;
        for a in args {
            let i = match &a.name {
                Some(k) => match params.iter().position(|p| &p.name.name == k) {
                    Some(i) => i,
                    None => {
                        let mut d = Diagnostic::new(
                            Phase::Resolution,
                            codes::BAD_ARG,
                            format!("`{callee}` has no parameter `{k}`"),
                        )
                        .at(a.span, "unknown keyword argument");
                        let names: Vec<&str> =
                            params.iter().map(|p| p.name.name.as_str()).collect();
                        if let Some(s) = did_you_mean(k, names.iter().copied()) {
                            d = d.with_help(format!("did you mean `{s}`?"));
                        }
                        return Err(self.report(d));
                    }
                },
                None => {
                    while next < params.len() && given[next].is_some() {
                        next += 1;
                    }
                    if next >= params.len() {
                        return Err(self.error(
                            Phase::Resolution,
                            codes::BAD_ARG,
                            a.span,
                            format!("too many arguments to `{callee}`"),
                            format!("`{callee}` takes {} parameters", params.len()),
                        ));
                    }
                    next
                }
            };
            if given[i].is_some() {
                return Err(self.error(
                    Phase::Resolution,
                    codes::BAD_ARG,
                    a.span,
                    format!(
                        "parameter `{}` of `{callee}` given twice",
                        params[i].name.name
                    ),
                    "given again here",
                ));
            }
            given[i] = Some(a);
        }
        for (p, g) in params.iter().zip(given) {
            let (v, at, origin) = match g {
                Some(a) => (a.value, a.span, a.origin),
                None => match &p.default {
                    Some(d) => (self.eval(ctx, d, Hint::None)?, d.span, None),
                    None => {
                        let d = Diagnostic::new(
                            Phase::Resolution,
                            codes::BAD_ARG,
                            format!("`{callee}` needs argument `{}`", p.name.name),
                        )
                        .at(span, format!("missing `{}`", p.name.name))
                        .with_secondary(p.name.span, "declared here without a default");
                        return Err(self.report(d));
                    }
                },
            };
            if ctx.get(&p.name.name).is_some() {
                let d = Diagnostic::new(
                    Phase::Elaboration,
                    codes::TYPE,
                    format!("`{}` is both a parameter and a dimension bound by an earlier parameter's shape", p.name.name),
                )
                .at(p.name.span, "declared as a parameter here")
                .with_help("rename the dimension in the shape pattern or the parameter");
                return Err(self.report(d));
            }
            if let Some(ty) = &p.ty {
                let what = match origin {
                    Some(o) => format!("parameter `{}` (given as `{o}`)", p.name.name),
                    None => format!("parameter `{}`", p.name.name),
                };
                self.check_type(ctx, &v, ty, at, &what)?;
            }
            let v = match (&p.ty, v) {
                (
                    Some(TypeExpr {
                        kind: TypeKind::Float,
                        ..
                    }),
                    Value::Int(i),
                ) => Value::Float(i as f64),
                (_, v) => v,
            };
            ctx.set(&p.name.name, v);
        }
        Ok(())
    }

    /// Checks `v` against a declared type; tensor dims bind unbound identifiers.
    pub fn check_type(
        &mut self,
        ctx: &mut Ctx,
        v: &Value,
        ty: &TypeExpr,
        span: Span,
        what: &str,
    ) -> R<()> {
        let ok = match (&ty.kind, v) {
            (_, Value::Poison) => return Err(Reported),
            (TypeKind::Int, Value::Int(_)) => true,
            (TypeKind::Float, Value::Int(_) | Value::Float(_)) => true,
            (TypeKind::Bool, Value::Bool(_)) => true,
            (TypeKind::Str, Value::Str(_)) => true,
            (TypeKind::Layer, Value::Layer(_) | Value::Callable(_)) => true,
            (TypeKind::List(inner), Value::List(items)) => {
                for item in items.iter() {
                    self.check_type(ctx, item, inner, span, what)?;
                }
                true
            }
            (TypeKind::Tuple(tys), Value::Tuple(items)) if tys.len() == items.len() => {
                for (t, item) in tys.iter().zip(items.iter()) {
                    self.check_type(ctx, item, t, span, what)?;
                }
                true
            }
            (TypeKind::Tensor(dims), Value::Tensor(t)) => {
                if let Some(dims) = dims {
                    let shape = self.shape_of(*t).clone();
                    self.match_shape(ctx, &shape, dims, span, what)?;
                }
                true
            }
            _ => false,
        };
        if !ok {
            let d = Diagnostic::new(
                Phase::Elaboration,
                codes::TYPE,
                format!(
                    "{what} has the wrong type: expected {}, found {}",
                    type_text(ty),
                    v.type_name()
                ),
            )
            .at(span, format!("expected {}", type_text(ty)))
            .with_secondary(ty.span, "declared here");
            return Err(self.report(d));
        }
        Ok(())
    }

    fn match_shape(
        &mut self,
        ctx: &mut Ctx,
        shape: &[usize],
        dims: &[Expr],
        span: Span,
        what: &str,
    ) -> R<()> {
        if shape.len() != dims.len() {
            return Err(self.error(
                Phase::Shape,
                codes::SHAPE,
                span,
                format!(
                    "{what} has rank {} but rank {} was declared",
                    shape.len(),
                    dims.len()
                ),
                format!("actual shape {shape:?}"),
            ));
        }
        for (&actual, d) in shape.iter().zip(dims) {
            if let ExprKind::Ident(name) = &d.kind {
                if name == "_" {
                    continue;
                }
                if ctx.get(name).is_none() && self.global(ctx.module, name).is_none() {
                    ctx.set(name, Value::Int(actual as i64));
                    continue;
                }
            }
            let want = self.eval(ctx, d, Hint::None)?;
            let want = self.expect_int(&want, d.span, "a dimension")?;
            if want != actual as i64 {
                let d = Diagnostic::new(
                    Phase::Shape,
                    codes::SHAPE,
                    format!("{what} has shape {shape:?}, which does not match the declared type"),
                )
                .at(d.span, format!("expected {want}, found {actual}"))
                .with_secondary(span, format!("this has shape {shape:?}"));
                return Err(self.report(d));
            }
        }
        Ok(())
    }

    pub fn apply_layer(&mut self, layer: &Rc<Layer>, input: Value, span: Span) -> R<Value> {
        let count = self.layer_counts.entry(layer.id).or_insert(0);
        *count += 1;
        let app = (layer.id, *count);
        let saved_path = std::mem::replace(&mut self.path, layer.base.clone());
        self.layer_apps.push(app);
        let what = match &layer.hint {
            Hint::Path(p) => format!("layer `{}`", p.join(".")),
            _ => "layer".to_string(),
        };
        let r = self.enter(what, span).and_then(|()| {
            let r = match &layer.kind {
                LayerKind::Partial { callee, args } => {
                    let mut all = vec![ArgValue {
                        name: None,
                        value: input,
                        span,
                        origin: None,
                    }];
                    all.extend(args.iter().cloned());
                    let mut ctx = Ctx::new(0, BodyKind::Fn);
                    self.call(
                        &mut ctx,
                        callee.clone(),
                        all,
                        layer.span,
                        layer.hint.clone(),
                    )
                }
                LayerKind::Seq {
                    body,
                    module,
                    locals,
                } => {
                    let mut ctx = Ctx::new(*module, BodyKind::Block);
                    ctx.frames[0] = locals.clone();
                    self.path
                        .extend(Self::hint_segments(&layer.hint, layer.span));
                    let mut st = SeqState {
                        current: input,
                        index: 0,
                    };
                    self.exec_seq(&mut ctx, body, &mut st).map(|()| st.current)
                }
            };
            self.leave();
            r
        });
        self.layer_apps.pop();
        self.path = saved_path;
        r
    }

    fn exec_seq(&mut self, ctx: &mut Ctx, body: &[Stmt], st: &mut SeqState) -> R<()> {
        for s in body {
            self.tick(s.span)?;
            match &s.kind {
                StmtKind::Expr(e) => {
                    let hint = Hint::Path(vec![st.index.to_string()]);
                    st.index += 1;
                    let input = std::mem::replace(&mut st.current, Value::Poison);
                    st.current = self.pipe(ctx, input, e, e.span, hint)?;
                    if !matches!(st.current, Value::Tensor(_) | Value::Poison) {
                        return Err(self.error(
                            Phase::Elaboration,
                            codes::TYPE,
                            e.span,
                            format!(
                                "a seq element must produce a tensor, this gives a {}",
                                st.current.type_name()
                            ),
                            "seq element",
                        ));
                    }
                }
                StmtKind::For {
                    pat,
                    iter,
                    path,
                    body,
                } => {
                    let it = self.eval(ctx, iter, Hint::None)?;
                    for item in self.iterate(&it, iter.span)? {
                        self.bind_pattern(ctx, pat, item)?;
                        let pushed = self.push_template(ctx, path.as_ref())?;
                        let r = self.exec_seq(ctx, body, st);
                        self.path.truncate(self.path.len() - pushed);
                        r?;
                    }
                }
                StmtKind::If {
                    cond,
                    then,
                    otherwise,
                } => {
                    let c = self.eval(ctx, cond, Hint::None)?;
                    if self.expect_bool(&c, cond.span)? {
                        self.exec_seq(ctx, then, st)?;
                    } else if let Some(o) = otherwise {
                        self.exec_seq(ctx, o, st)?;
                    }
                }
                StmtKind::Let { .. } | StmtKind::Assert { .. } => self.exec(ctx, s)?,
                _ => {
                    return Err(self.error(
                        Phase::Elaboration,
                        codes::MISPLACED,
                        s.span,
                        "only layers, `let`, `for`, `if` and `assert` may appear in a seq",
                        "not allowed in a seq",
                    ));
                }
            }
        }
        Ok(())
    }

    fn push_template(&mut self, ctx: &mut Ctx, t: Option<&StrLit>) -> R<usize> {
        let Some(t) = t else { return Ok(0) };
        let s = self.interpolate(ctx, t)?;
        let segs = self.segments(&s, t.span)?;
        let n = segs.len();
        self.path.extend(segs.into_iter().map(Segment::Name));
        Ok(n)
    }

    // ----- statements ------------------------------------------------------------------

    /// Runs statements, continuing after a failed one so that later mistakes are reported too.
    pub fn exec_body(&mut self, ctx: &mut Ctx, body: &[Stmt]) -> R<()> {
        let mut failed = false;
        for s in body {
            if ctx.returned.is_some() {
                break;
            }
            if self.exec(ctx, s).is_err() {
                failed = true;
                if self.step_limit_hit {
                    break;
                }
                self.poison_targets(ctx, s);
            }
        }
        if failed {
            Err(Reported)
        } else {
            Ok(())
        }
    }

    fn poison_targets(&mut self, ctx: &mut Ctx, s: &Stmt) {
        fn names(p: &Pattern, out: &mut Vec<String>) {
            match p {
                Pattern::Ident(i) => out.push(i.name.clone()),
                Pattern::Wildcard(_) => {}
                Pattern::Tuple(ps, _) => ps.iter().for_each(|p| names(p, out)),
            }
        }
        fn bound(s: &Stmt, out: &mut Vec<String>) {
            match &s.kind {
                StmtKind::Let { pat, .. } | StmtKind::Assign { pat, .. } => names(pat, out),
                StmtKind::Decl { name, .. } | StmtKind::Input { name, .. } => {
                    out.push(name.name.clone())
                }
                StmtKind::For { pat, body, .. } => {
                    names(pat, out);
                    body.iter().for_each(|s| bound(s, out));
                }
                StmtKind::If {
                    then, otherwise, ..
                } => {
                    then.iter()
                        .chain(otherwise.iter().flatten())
                        .for_each(|s| bound(s, out));
                }
                StmtKind::Scope { body, .. } => body.iter().for_each(|s| bound(s, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        bound(s, &mut out);
        for n in out {
            ctx.set(&n, Value::Poison);
        }
    }

    fn pattern_hint(pat: &Pattern) -> Hint {
        match pat {
            Pattern::Ident(i) => Hint::Path(vec![i.name.clone()]),
            _ => Hint::None,
        }
    }

    pub fn bind_pattern(&mut self, ctx: &mut Ctx, pat: &Pattern, v: Value) -> R<()> {
        match pat {
            Pattern::Ident(i) => {
                ctx.set(&i.name, v);
                Ok(())
            }
            Pattern::Wildcard(_) => Ok(()),
            Pattern::Tuple(ps, span) => {
                if matches!(v, Value::Poison) {
                    for p in ps {
                        self.bind_pattern(ctx, p, Value::Poison)?;
                    }
                    return Ok(());
                }
                let items = match v.items() {
                    Some(items) if items.len() == ps.len() => items.to_vec(),
                    Some(items) => {
                        return Err(self.error(
                            Phase::Elaboration,
                            codes::TYPE,
                            *span,
                            format!(
                                "cannot unpack {} values into {} names",
                                items.len(),
                                ps.len()
                            ),
                            "pattern",
                        ));
                    }
                    None => {
                        return Err(self.error(
                            Phase::Elaboration,
                            codes::TYPE,
                            *span,
                            format!("cannot unpack a {}", v.type_name()),
                            "expected a tuple or list",
                        ));
                    }
                };
                for (p, item) in ps.iter().zip(items) {
                    self.bind_pattern(ctx, p, item)?;
                }
                Ok(())
            }
        }
    }

    pub fn exec(&mut self, ctx: &mut Ctx, s: &Stmt) -> R<()> {
        self.tick(s.span)?;
        match &s.kind {
            StmtKind::Let { pat, value } | StmtKind::Assign { pat, value } => {
                let v = self.eval(ctx, value, Self::pattern_hint(pat))?;
                self.bind_pattern(ctx, pat, v)
            }
            StmtKind::Input { name, dtype, dims } => self.input(ctx, s.span, name, dtype, dims),
            StmtKind::Output { name, value } => {
                if ctx.kind != BodyKind::Model {
                    return Err(self.error(
                        Phase::Elaboration,
                        codes::MISPLACED,
                        s.span,
                        "`output` is only allowed in a model",
                        "use `return` in a block",
                    ));
                }
                let v = self.eval(ctx, value, Hint::Path(vec![name.name.clone()]))?;
                self.add_output(&name.name, &v, value.span)
            }
            StmtKind::For {
                pat,
                iter,
                path,
                body,
            } => {
                let it = self.eval(ctx, iter, Hint::None)?;
                let mut failed = false;
                for item in self.iterate(&it, iter.span)? {
                    let what = iteration_note(self.sources.snippet(pat.span()), &item);
                    self.bind_pattern(ctx, pat, item)?;
                    let pushed = self.push_template(ctx, path.as_ref())?;
                    self.chain.push((Frame::iteration(what, s.span), false));
                    let r = self.exec_body(ctx, body);
                    self.chain.pop();
                    self.path.truncate(self.path.len() - pushed);
                    if r.is_err() {
                        failed = true;
                        break;
                    }
                    if ctx.returned.is_some() {
                        break;
                    }
                }
                if failed {
                    Err(Reported)
                } else {
                    Ok(())
                }
            }
            StmtKind::If {
                cond,
                then,
                otherwise,
            } => {
                let c = self.eval(ctx, cond, Hint::None)?;
                if self.expect_bool(&c, cond.span)? {
                    self.exec_body(ctx, then)
                } else if let Some(o) = otherwise {
                    self.exec_body(ctx, o)
                } else {
                    Ok(())
                }
            }
            StmtKind::Scope { path, body } => {
                let pushed = self.push_template(ctx, Some(path))?;
                let r = self.exec_body(ctx, body);
                self.path.truncate(self.path.len() - pushed);
                r
            }
            StmtKind::Assert { cond, message } => {
                let c = self.eval(ctx, cond, Hint::None)?;
                if self.expect_bool(&c, cond.span)? {
                    return Ok(());
                }
                let msg = match message {
                    Some(m) => {
                        let v = self.eval(ctx, m, Hint::None)?;
                        v.to_string()
                    }
                    None => self.sources.snippet(cond.span).to_string(),
                };
                Err(self.error(
                    Phase::Elaboration,
                    codes::ASSERT,
                    cond.span,
                    format!("assertion failed: {msg}"),
                    "this condition is false",
                ))
            }
            StmtKind::Return { value } => {
                if ctx.kind != BodyKind::Block {
                    return Err(self.error(
                        Phase::Elaboration,
                        codes::MISPLACED,
                        s.span,
                        "`return` is only allowed in a block",
                        "a model names its results with `output`",
                    ));
                }
                let v = self.eval(ctx, value, Hint::Anonymous)?;
                ctx.returned = Some(v);
                Ok(())
            }
            StmtKind::Decl {
                kind,
                name,
                dtype,
                dims,
                init,
            } => self.decl(ctx, s.span, *kind, name, dtype, dims, init.as_ref()),
            StmtKind::Rename { .. } | StmtKind::Ignore { .. } if ctx.kind != BodyKind::Model => {
                Err(self.error(
                    Phase::Elaboration,
                    codes::MISPLACED,
                    s.span,
                    "`rename` and `ignore` are only allowed in a model",
                    "checkpoint key rules belong to the model",
                ))
            }
            StmtKind::Rename {
                from,
                from_span,
                to,
            } => {
                self.check_regex(from, *from_span)?;
                self.graph
                    .key_rules
                    .renames
                    .push((from.clone(), to.clone()));
                Ok(())
            }
            StmtKind::Ignore {
                pattern,
                pattern_span,
            } => {
                self.check_regex(pattern, *pattern_span)?;
                self.graph.key_rules.ignores.push(pattern.clone());
                Ok(())
            }
            StmtKind::Expr(e) => {
                let v = self.eval(ctx, e, Hint::None)?;
                if matches!(v, Value::Poison) {
                    return Err(Reported);
                }
                Err(self
                    .error(
                        Phase::Elaboration,
                        codes::MISPLACED,
                        e.span,
                        "this expression's value is not used",
                        "bind it with `name = ...;`",
                    )
                    .and_help_hint(self))
            }
        }
    }

    fn check_regex(&mut self, pattern: &str, span: Span) -> R<()> {
        if let Err(e) = regex::Regex::new(pattern) {
            let msg = e.to_string();
            let last = msg.lines().last().unwrap_or("").trim().to_string();
            return Err(self.error(
                Phase::Elaboration,
                codes::BAD_VALUE,
                span,
                "invalid regular expression",
                last,
            ));
        }
        Ok(())
    }

    fn add_output(&mut self, name: &str, v: &Value, span: Span) -> R<()> {
        match v {
            Value::Tensor(t) => {
                if !self.output_names.insert(name.to_string()) {
                    return Err(self.error(
                        Phase::Elaboration,
                        codes::DUPLICATE_PATH,
                        span,
                        format!("output `{name}` is defined twice"),
                        "second definition",
                    ));
                }
                self.graph.outputs.push(crate::ir::Output {
                    name: name.to_string(),
                    value: *t,
                });
                Ok(())
            }
            Value::List(items) | Value::Tuple(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.add_output(&format!("{name}.{i}"), item, span)?;
                }
                Ok(())
            }
            Value::Poison => Err(Reported),
            other => Err(self.error(
                Phase::Elaboration,
                codes::TYPE,
                span,
                format!(
                    "an output must be a tensor or a list of tensors, found {}",
                    other.type_name()
                ),
                "not a tensor",
            )),
        }
    }

    /// Element types a spec may declare; everything computes in f32 today.
    fn check_dtype(&mut self, dtype: &Ident) -> R<()> {
        if dtype.name == "f32" {
            return Ok(());
        }
        Err(self.error(
            Phase::Elaboration,
            codes::TYPE,
            dtype.span,
            format!("unsupported dtype `{}`", dtype.name),
            "only f32 is supported",
        ))
    }

    /// One dimension of an `input`: a `--dim` override, a default, a bound name, or a value.
    fn input_dim(&mut self, ctx: &mut Ctx, d: &InputDim) -> R<usize> {
        let size = match (&d.name, &d.value) {
            // A name already bound (a model parameter, an earlier input's size parameter) is a
            // value, not a size parameter of its own.
            (Some(n), None)
                if ctx.get(&n.name).is_some() || self.global(ctx.module, &n.name).is_some() =>
            {
                let v = ctx
                    .get(&n.name)
                    .cloned()
                    .or_else(|| self.global(ctx.module, &n.name))
                    .unwrap_or(Value::Poison);
                self.expect_int(&v, n.span, "a dimension")?
            }
            (Some(n), default) => {
                // `N=5` after `N` is bound to 4 would make one name mean two sizes. Where
                // `--dim` gives the value, it decides both.
                if let (Some(e), Some(bound), false) = (
                    default,
                    ctx.get(&n.name).cloned(),
                    self.dims.contains_key(&n.name),
                ) {
                    let bound = self.expect_int(&bound, n.span, "a dimension")?;
                    let v = self.eval(ctx, e, Hint::None)?;
                    let v = self.expect_int(&v, e.span, "a dimension")?;
                    if v != bound {
                        let d = Diagnostic::new(
                            Phase::Elaboration,
                            codes::DUPLICATE_PATH,
                            format!(
                                "size parameter `{}` is already {bound}, and is declared again with {v}",
                                n.name
                            ),
                        )
                        .at(e.span, format!("a second default for `{}`", n.name))
                        .with_help(format!(
                            "write `{}` alone to reuse the size bound earlier, or give this dimension another name",
                            n.name
                        ));
                        return Err(self.report(d));
                    }
                }
                self.size_params.push(n.name.clone());
                if let Some((v, used)) = self.dims.get_mut(&n.name) {
                    *used = true;
                    let v = *v;
                    ctx.set(&n.name, Value::Int(v));
                    v
                } else if let Some(e) = default {
                    let v = self.eval(ctx, e, Hint::None)?;
                    let v = self.expect_int(&v, e.span, "a dimension")?;
                    ctx.set(&n.name, Value::Int(v));
                    v
                } else {
                    let d = Diagnostic::new(
                        Phase::Elaboration,
                        codes::MISSING_DIM,
                        format!("size parameter `{}` has no value", n.name),
                    )
                    .at(n.span, "no default here")
                    .with_help(format!(
                        "pass `--dim {}=N`, or give a default: `{}=1`",
                        n.name, n.name
                    ));
                    return Err(self.report(d));
                }
            }
            (None, Some(e)) => {
                let v = self.eval(ctx, e, Hint::None)?;
                self.expect_int(&v, e.span, "a dimension")?
            }
            (None, None) => unreachable!("the parser gives every input dim a name or a value"),
        };
        if size <= 0 {
            return Err(self.error(
                Phase::Shape,
                codes::SHAPE,
                d.span,
                format!("input dimension must be positive, found {size}"),
                "here",
            ));
        }
        Ok(size as usize)
    }

    fn input(
        &mut self,
        ctx: &mut Ctx,
        span: Span,
        name: &Ident,
        dtype: &Ident,
        dims: &[InputDim],
    ) -> R<()> {
        if ctx.kind != BodyKind::Model {
            return Err(self.error(
                Phase::Elaboration,
                codes::MISPLACED,
                span,
                "`input` is only allowed in a model",
                "blocks take tensors as parameters",
            ));
        }
        self.check_dtype(dtype)?;
        // Every dim is evaluated even after a failure; a failed named dim is bound to
        // `Poison` so later uses of it stay silent.
        let mut shape = Vec::new();
        let mut failed = false;
        for d in dims {
            match self.input_dim(ctx, d) {
                Ok(size) => shape.push(size),
                Err(Reported) => {
                    failed = true;
                    if let Some(n) = &d.name {
                        ctx.set(&n.name, Value::Poison);
                    }
                }
            }
        }
        if failed {
            return Err(Reported);
        }
        self.check_numel(&shape, span, "input")?;
        if self.taken.contains(&name.name) {
            return Err(self.error(
                Phase::Elaboration,
                codes::DUPLICATE_PATH,
                name.span,
                format!("input `{}` is defined twice", name.name),
                "again here",
            ));
        }
        self.names.insert(name.name.clone(), 1);
        let id = self.add_node(name.name.clone(), NodeKind::Input, shape, name.span, &[])?;
        self.graph.inputs.push(id);
        ctx.set(&name.name, Value::Tensor(id));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn decl(
        &mut self,
        ctx: &mut Ctx,
        span: Span,
        kind: DeclKind,
        name: &Ident,
        dtype: &Ident,
        dims: &[Expr],
        init: Option<&Expr>,
    ) -> R<()> {
        self.check_dtype(dtype)?;
        let mut shape = Vec::new();
        for d in dims {
            let v = self.eval(ctx, d, Hint::None)?;
            let v = self.expect_int(&v, d.span, "a dimension")?;
            if v < 0 {
                return Err(self.error(
                    Phase::Shape,
                    codes::SHAPE,
                    d.span,
                    format!("dimension must not be negative, found {v}"),
                    "here",
                ));
            }
            shape.push(v as usize);
        }
        let value = match kind {
            DeclKind::Param | DeclKind::Buffer => {
                let init = match init {
                    Some(e) => self.init_spec(ctx, e)?,
                    None => Init::Zeros,
                };
                let pk = if kind == DeclKind::Param {
                    ParamKind::Param
                } else {
                    ParamKind::Buffer
                };
                let mut key = self.path.clone();
                key.push(Segment::Name(name.name.clone()));
                self.declare_param(&key, pk, init, shape, name.span)?
            }
            DeclKind::Const => {
                let Some(e) = init else {
                    return Err(self.error(
                        Phase::Elaboration,
                        codes::BAD_VALUE,
                        span,
                        "a `const` needs a value",
                        "add `= expr`",
                    ));
                };
                let hint = Hint::Path(vec![name.name.clone()]);
                let id = match self.try_init_fill(ctx, e)? {
                    Some(value) => {
                        let op = ops::lookup("full").expect("`full` is in the op table");
                        let mut attrs = Attrs::new();
                        attrs.insert(
                            "shape".into(),
                            Attr::Ints(shape.iter().map(|&d| d as i64).collect()),
                        );
                        attrs.insert("value".into(), Attr::Float(value));
                        match self.emit_op(op, attrs, &[], e.span, hint)? {
                            Value::Tensor(t) => t,
                            _ => unreachable!("emit_op yields a tensor"),
                        }
                    }
                    None => match self.eval(ctx, e, hint)? {
                        Value::Tensor(t) => t,
                        Value::Poison => return Err(Reported),
                        other => {
                            return Err(self.error(
                                Phase::Elaboration,
                                codes::TYPE,
                                e.span,
                                format!("a const must be a tensor, found {}", other.type_name()),
                                "not a tensor",
                            ))
                        }
                    },
                };
                if self.shape_of(id) != &shape {
                    let actual = self.shape_of(id).clone();
                    return Err(self.error(
                        Phase::Shape,
                        codes::SHAPE,
                        e.span,
                        format!(
                            "const `{}` is declared {shape:?} but its value has shape {actual:?}",
                            name.name
                        ),
                        "value computed here",
                    ));
                }
                id
            }
        };
        ctx.set(&name.name, Value::Tensor(value));
        Ok(())
    }

    /// `zeros()`, `ones()`, `fill(v)` as a constant value, if `e` is one of them.
    fn try_init_fill(&mut self, ctx: &mut Ctx, e: &Expr) -> R<Option<f64>> {
        if let ExprKind::Call { callee, .. } = &e.kind {
            if let ExprKind::Ident(f) = &callee.kind {
                if matches!(f.as_str(), "zeros" | "ones" | "fill") && ctx.get(f).is_none() {
                    return match self.init_spec(ctx, e)? {
                        Init::Zeros => Ok(Some(0.0)),
                        Init::Ones => Ok(Some(1.0)),
                        Init::Fill(v) => Ok(Some(v)),
                        _ => unreachable!("zeros/ones/fill give constant inits"),
                    };
                }
            }
        }
        Ok(None)
    }

    fn init_spec(&mut self, ctx: &mut Ctx, e: &Expr) -> R<Init> {
        let bad = |this: &mut Self| {
            let d = Diagnostic::new(Phase::Elaboration, codes::BAD_VALUE, "unknown initialiser")
                .at(e.span, "expected an initialiser")
                .with_help("use zeros(), ones(), fill(v), uniform(bound), normal(std) or trunc_normal(std)");
            this.report(d)
        };
        let ExprKind::Call { callee, args } = &e.kind else {
            return Err(bad(self));
        };
        let ExprKind::Ident(f) = &callee.kind else {
            return Err(bad(self));
        };
        let vals = self.eval_args(ctx, args)?;
        let nums: Vec<f64> = vals.iter().filter_map(|a| a.value.as_f64()).collect();
        if nums.len() != vals.len() {
            return Err(self.error(
                Phase::Elaboration,
                codes::TYPE,
                e.span,
                "initialiser arguments must be numbers",
                "here",
            ));
        }
        let want = |this: &mut Self, n: usize| -> R<()> {
            if nums.len() != n {
                return Err(this.error(
                    Phase::Elaboration,
                    codes::BAD_VALUE,
                    e.span,
                    format!("`{f}` takes {n} argument(s), {} given", nums.len()),
                    "here",
                ));
            }
            Ok(())
        };
        Ok(match f.as_str() {
            "zeros" => {
                want(self, 0)?;
                Init::Zeros
            }
            "ones" => {
                want(self, 0)?;
                Init::Ones
            }
            "fill" => {
                want(self, 1)?;
                Init::Fill(nums[0])
            }
            "uniform" => {
                want(self, 1)?;
                Init::Uniform(nums[0])
            }
            "normal" => {
                want(self, 1)?;
                Init::Normal(nums[0])
            }
            "trunc_normal" => {
                want(self, 1)?;
                Init::TruncNormal(nums[0])
            }
            _ => return Err(bad(self)),
        })
    }

    // ----- operators -------------------------------------------------------------------

    fn unary(&mut self, op: UnOp, v: Value, span: Span, hint: Hint) -> R<Value> {
        match (op, v) {
            (_, Value::Poison) => Ok(Value::Poison),
            (UnOp::Neg, Value::Int(i)) => i
                .checked_neg()
                .map(Value::Int)
                .ok_or_else(|| self.overflow(span)),
            (UnOp::Neg, Value::Float(f)) => Ok(Value::Float(-f)),
            (UnOp::Neg, Value::Tensor(t)) => {
                let hint = match hint {
                    Hint::Path(p) => Hint::Path(p),
                    _ => Hint::None,
                };
                self.emit_op(
                    ops::lookup("neg").expect("neg op"),
                    Attrs::new(),
                    &[t],
                    span,
                    hint,
                )
            }
            (UnOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
            (op, v) => {
                let sym = if op == UnOp::Neg { "-" } else { "!" };
                Err(self.error(
                    Phase::Elaboration,
                    codes::TYPE,
                    span,
                    format!("cannot apply `{sym}` to a {}", v.type_name()),
                    "here",
                ))
            }
        }
    }

    pub fn overflow(&mut self, span: Span) -> Reported {
        self.error(
            Phase::Elaboration,
            codes::OVERFLOW,
            span,
            "integer overflow",
            "this value does not fit in 64 bits",
        )
    }

    fn scalar_node(&mut self, v: f64, span: Span) -> R<ValueId> {
        let op = ops::lookup("full").expect("`full` is in the op table");
        let mut attrs = Attrs::new();
        attrs.insert("shape".into(), Attr::Ints(vec![]));
        attrs.insert("value".into(), Attr::Float(v));
        match self.emit_op(op, attrs, &[], span, Hint::None)? {
            Value::Tensor(t) => Ok(t),
            _ => unreachable!("emit_op yields a tensor"),
        }
    }

    fn binary(&mut self, op: BinOp, l: Value, r: Value, span: Span, hint: Hint) -> R<Value> {
        use Value::{Bool, Float, Int, List, Poison, Str, Tensor, Tuple};
        if matches!(l, Poison) || matches!(r, Poison) {
            return Ok(Poison);
        }
        if matches!(l, Tensor(_)) || matches!(r, Tensor(_)) {
            let name = match op {
                BinOp::Add => "add",
                BinOp::Sub => "sub",
                BinOp::Mul => "mul",
                BinOp::Div => "div",
                BinOp::Pow => "pow",
                _ => {
                    return Err(self.error(
                        Phase::Elaboration,
                        codes::TYPE,
                        span,
                        format!("`{}` is not defined on tensors", op.symbol()),
                        "compile-time operator applied to a tensor",
                    ));
                }
            };
            let operand = |v: Value, this: &mut Self| -> R<ValueId> {
                match v {
                    Tensor(t) => Ok(t),
                    Int(i) => this.scalar_node(i as f64, span),
                    Float(f) => this.scalar_node(f, span),
                    other => Err(this.error(
                        Phase::Elaboration,
                        codes::TYPE,
                        span,
                        format!("cannot combine a tensor with a {}", other.type_name()),
                        "here",
                    )),
                }
            };
            let a = operand(l, self)?;
            let b = operand(r, self)?;
            let hint = match hint {
                Hint::Path(p) => Hint::Path(p),
                _ => Hint::None,
            };
            return self.emit_op(
                ops::lookup(name).expect("binary op in table"),
                Attrs::new(),
                &[a, b],
                span,
                hint,
            );
        }
        let result = match (op, &l, &r) {
            (BinOp::Add, Int(a), Int(b)) => a.checked_add(*b).map(Int),
            (BinOp::Sub, Int(a), Int(b)) => a.checked_sub(*b).map(Int),
            (BinOp::Mul, Int(a), Int(b)) => a.checked_mul(*b).map(Int),
            (BinOp::FloorDiv | BinOp::Mod, Int(_), Int(0)) => {
                return Err(self.error(
                    Phase::Elaboration,
                    codes::DIV_ZERO,
                    span,
                    "integer division by zero",
                    "divisor is 0",
                ));
            }
            (BinOp::FloorDiv, Int(a), Int(b)) => {
                a.checked_div_euclid(*b).map(|_| Int(floor_div(*a, *b)))
            }
            (BinOp::Mod, Int(a), Int(b)) => {
                a.checked_rem(*b).map(|_| Int(a - b * floor_div(*a, *b)))
            }
            (BinOp::Pow, Int(a), Int(b)) if *b >= 0 => u32::try_from(*b)
                .ok()
                .and_then(|b| a.checked_pow(b))
                .map(Int),
            (BinOp::Div, _, _) if r.as_f64() == Some(0.0) && l.as_f64().is_some() => {
                return Err(self.error(
                    Phase::Elaboration,
                    codes::DIV_ZERO,
                    span,
                    "division by zero",
                    "divisor is 0",
                ));
            }
            (BinOp::Concat, List(a), List(b)) => {
                self.charge((a.len() + b.len()) as u64, span)?;
                let v = Value::list(a.iter().chain(b.iter()).cloned().collect());
                self.check_size(&v, span)?;
                Some(v)
            }
            (BinOp::Concat, Tuple(a), Tuple(b)) => {
                self.charge((a.len() + b.len()) as u64, span)?;
                let v = Tuple(Rc::new(a.iter().chain(b.iter()).cloned().collect()));
                self.check_size(&v, span)?;
                Some(v)
            }
            (BinOp::Add | BinOp::Concat, Str(a), Str(b)) => {
                self.check_str_len(a.len() + b.len(), span)?;
                Some(Value::str(format!("{a}{b}")))
            }
            (BinOp::Range, Int(a), Int(b)) => {
                let n = (*b as i128 - *a as i128).max(0);
                if n > MAX_LIST as i128 {
                    return Err(self.error(
                        Phase::Elaboration,
                        codes::LIMIT,
                        span,
                        format!("range of {n} elements is too long"),
                        "at most 1000000",
                    ));
                }
                self.charge(n as u64, span)?;
                Some(Value::list((*a..*b).map(Int).collect()))
            }
            (BinOp::Eq, a, b) => Some(Bool(values_equal(a, b))),
            (BinOp::Ne, a, b) => Some(Bool(!values_equal(a, b))),
            (BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge, a, b) => {
                let ord = match (a, b) {
                    (Str(x), Str(y)) => Some(x.cmp(y)),
                    _ => match (a.as_f64(), b.as_f64()) {
                        (Some(x), Some(y)) => x.partial_cmp(&y),
                        _ => None,
                    },
                };
                ord.map(|o| {
                    Bool(match op {
                        BinOp::Lt => o.is_lt(),
                        BinOp::Le => o.is_le(),
                        BinOp::Gt => o.is_gt(),
                        _ => o.is_ge(),
                    })
                })
            }
            (
                BinOp::Add
                | BinOp::Sub
                | BinOp::Mul
                | BinOp::Div
                | BinOp::FloorDiv
                | BinOp::Mod
                | BinOp::Pow,
                a,
                b,
            ) => match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => Some(Float(match op {
                    BinOp::Add => x + y,
                    BinOp::Sub => x - y,
                    BinOp::Mul => x * y,
                    BinOp::Div => x / y,
                    BinOp::FloorDiv => (x / y).floor(),
                    BinOp::Mod => x - y * (x / y).floor(),
                    _ => x.powf(y),
                })),
                _ => None,
            },
            _ => None,
        };
        if let Some(v) = result {
            if let Float(f) = v {
                if !f.is_finite() {
                    return Err(self.error(
                        Phase::Elaboration,
                        codes::OVERFLOW,
                        span,
                        "floating-point result is not finite",
                        format!("gives {f}"),
                    ));
                }
            }
            return Ok(v);
        }
        let numeric = l.as_f64().is_some() && r.as_f64().is_some();
        if numeric
            && matches!(
                op,
                BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Pow | BinOp::FloorDiv | BinOp::Mod
            )
        {
            return Err(self.overflow(span));
        }
        let mut d = Diagnostic::new(
            Phase::Elaboration,
            codes::TYPE,
            format!(
                "`{}` is not defined for {} and {}",
                op.symbol(),
                l.type_name(),
                r.type_name()
            ),
        )
        .at(span, "in this expression");
        if op == BinOp::Add && matches!((&l, &r), (List(_), List(_))) {
            d = d.with_help("lists are joined with `++`");
        }
        Err(self.report(d))
    }

    fn index(&mut self, b: Value, i: Value, span: Span) -> R<Value> {
        match (&b, &i) {
            (Value::Poison, _) | (_, Value::Poison) => Ok(Value::Poison),
            (Value::List(items) | Value::Tuple(items), Value::Int(k)) => {
                let n = items.len() as i64;
                let idx = if *k < 0 { k + n } else { *k };
                if idx < 0 || idx >= n {
                    return Err(self.error(
                        Phase::Elaboration,
                        codes::INDEX,
                        span,
                        format!(
                            "index {k} is out of range for a {} of length {n}",
                            b.type_name()
                        ),
                        "out of range",
                    ));
                }
                Ok(items[idx as usize].clone())
            }
            (Value::Str(s), Value::Int(k)) => {
                let chars: Vec<char> = s.chars().collect();
                let n = chars.len() as i64;
                let idx = if *k < 0 { k + n } else { *k };
                if idx < 0 || idx >= n {
                    return Err(self.error(
                        Phase::Elaboration,
                        codes::INDEX,
                        span,
                        format!("index {k} is out of range for a string of length {n}"),
                        "out of range",
                    ));
                }
                Ok(Value::str(chars[idx as usize].to_string()))
            }
            (Value::Tensor(_), _) => Err(self.error(
                Phase::Elaboration,
                codes::TYPE,
                span,
                "tensors are not indexed with `[]`",
                "use slice(x, axis=.., start=.., end=..)",
            )),
            _ => Err(self.error(
                Phase::Elaboration,
                codes::TYPE,
                span,
                format!("cannot index {} with {}", b.a_type(), i.a_type()),
                "here",
            )),
        }
    }
}

trait HelpHint {
    fn and_help_hint(self, e: &mut Elab) -> Reported;
}

impl HelpHint for Reported {
    fn and_help_hint(self, e: &mut Elab) -> Reported {
        if let Some(d) = e.diags.last_mut() {
            d.help = Some("in a block or model, a call must be bound to a name; bare calls are only seq elements".into());
        }
        self
    }
}

/// The note for one iteration of a `for` loop: `iteration `i = 3` of `for``.
fn iteration_note(pattern: &str, item: &Value) -> String {
    let mut value = item.to_string();
    if value.chars().count() > 48 {
        value = value.chars().take(45).collect::<String>() + "...";
    }
    format!("iteration `{pattern} = {value}` of the `for`")
}

/// bbc's name for a PyTorch keyword argument, or (starting with a space) why it has none.
fn pytorch_spelling(k: &str) -> Option<&'static str> {
    Some(match k {
        "kernel_size" | "kernel" => "k",
        "stride" => "s",
        "padding" => "pad",
        "out_channels" | "out_features" | "num_features" => "out",
        "in_channels" | "in_features" => " inferred",
        "dim" => "axis",
        "bias_attr" => "bias",
        _ => return None,
    })
}

fn pytorch_help(k: &str, spelling: &str) -> String {
    match spelling.strip_prefix(' ') {
        Some(_) => format!("`{k}` is inferred from the input tensor's shape; leave it out"),
        None => format!("bbc spells PyTorch's `{k}` as `{spelling}`"),
    }
}

pub fn floor_div(a: i64, b: i64) -> i64 {
    let q = a / b;
    if (a % b != 0) && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    }
}

/// Whether a value is, or holds, the result of an expression that already failed.
fn contains_poison(v: &Value) -> bool {
    match v {
        Value::Poison => true,
        Value::List(items) | Value::Tuple(items) => items.iter().any(contains_poison),
        _ => false,
    }
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::None, Value::None) => true,
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| values_equal(p, q))
        }
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

fn default_attr(ty: ArgType, d: Default) -> Attr {
    match (ty, d) {
        (ArgType::Pair | ArgType::OptPair, Default::Int(i)) => Attr::Ints(vec![i, i]),
        (ArgType::Ints, Default::Int(i)) => Attr::Ints(vec![i]),
        (ArgType::Float | ArgType::OptFloat, Default::Int(i)) => Attr::Float(i as f64),
        (_, Default::Int(i)) => Attr::Int(i),
        (_, Default::Float(f)) => Attr::Float(f),
        (_, Default::Bool(b)) => Attr::Bool(b),
        (_, Default::Str(s)) => Attr::Str(s.to_string()),
        (_, Default::None) => Attr::None,
        (_, Default::Required | Default::SameAs(_)) => Attr::None,
    }
}

pub fn type_text(ty: &TypeExpr) -> String {
    match &ty.kind {
        TypeKind::Int => "int".into(),
        TypeKind::Float => "float".into(),
        TypeKind::Bool => "bool".into(),
        TypeKind::Str => "str".into(),
        TypeKind::Layer => "layer".into(),
        TypeKind::Tensor(None) => "tensor".into(),
        TypeKind::Tensor(Some(d)) => format!("tensor with {} dims", d.len()),
        TypeKind::List(t) => format!("[{}]", type_text(t)),
        TypeKind::Tuple(ts) => format!(
            "({})",
            ts.iter().map(type_text).collect::<Vec<_>>().join(", ")
        ),
    }
}
