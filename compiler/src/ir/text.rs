//! The Graph IR's text form: one value per line, printed in topological order, and a parser
//! that reads it back into an identical graph (the round-trip is tested).
//!
//! ```text
//! graph sbd_test {
//!   input %z: f32[2, 4]  @ specs/spatial_broadcast_decoder.bb:20:5
//!   param %dec.0.weight: f32[8, 6, 3, 3] = uniform(0.136)  @ specs/spatial_broadcast_decoder.bb:26:9
//!   %dec.0 = conv2d(%inp, %dec.0.weight, %dec.0.bias) {groups=1, k=[3, 3], ...}: f32[2, 8, 14, 14]  @ ...
//!   output %x_hat = %dec.8
//! }
//! ```
//! Locations follow `@`; a block instantiation chain follows as `< file:line:col` frames.
//!
//! A folded constant lists its elements in row-major order, each as the shortest decimal that
//! reads back as the same f32: on its own line up to [`CONST_INLINE`] elements
//! (`const %scale: f32[3] = [0.5, 0.25, 2.0]`), otherwise between `= [` and a closing `]` line,
//! [`CONST_INLINE`] elements (whole rows of the last axis where they fit) per line.

use super::{DType, Graph, Node, NodeKind, Output, ValueId};
use crate::ops::{self, format_float, Attr, Attrs, Init, ParamKind};
use bbc_grammar::Location;
use std::collections::HashMap;
use std::fmt::Write;

fn shape_text(dtype: DType, shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("{dtype}[{}]", dims.join(", "))
}

fn init_text(init: &Init) -> String {
    match init {
        Init::Zeros => "zeros".into(),
        Init::Ones => "ones".into(),
        Init::Fill(v) => format!("fill({})", format_float(*v)),
        Init::Uniform(b) => format!("uniform({})", format_float(*b)),
        Init::Normal(s) => format!("normal({})", format_float(*s)),
        Init::TruncNormal(s) => format!("trunc_normal({})", format_float(*s)),
    }
}

/// The most elements a constant prints on its own line, and per line when it is longer.
pub const CONST_INLINE: usize = 16;

/// Shortest decimal that reads back as the same f32 (`1.0`, `-0.8666667`, `1e-7`, `NaN`).
fn f32_text(v: f32) -> String {
    format!("{v:?}")
}

/// Elements per line of a long constant: whole rows of the last axis when they fit.
fn const_row(shape: &[usize]) -> usize {
    match shape.last() {
        Some(&w) if (1..=CONST_INLINE).contains(&w) => CONST_INLINE / w * w,
        _ => CONST_INLINE,
    }
}

fn loc_text(node: &Node) -> String {
    let Some(loc) = &node.loc else {
        return String::new();
    };
    let mut s = format!("  @ {loc}");
    for frame in &node.chain {
        let _ = write!(s, " < {frame}");
    }
    s
}

/// Prints `graph` in the text form.
pub fn print_text(graph: &Graph) -> String {
    let mut out = format!("graph {} {{\n", graph.name);
    write_body(&mut out, graph, 1);
    out.push_str("}\n");
    out
}

/// The nodes, outputs and key rules of `graph`, indented by `depth` levels; a fusion group
/// prints its body nested between `{` and `}`.
fn write_body(out: &mut String, graph: &Graph, depth: usize) {
    let pad = "  ".repeat(depth);
    for id in graph.topo_order() {
        let node = graph.node(id);
        let ty = shape_text(node.dtype, &node.shape);
        let args = || -> String {
            let names: Vec<String> = graph
                .inputs(id)
                .iter()
                .map(|&i| format!("%{}", graph.node(i).name))
                .collect();
            names.join(", ")
        };
        let line = match &node.kind {
            NodeKind::Input => format!("input %{}: {ty}", node.name),
            NodeKind::Param { kind, init } => {
                let word = match kind {
                    ParamKind::Param => "param",
                    ParamKind::Buffer => "buffer",
                };
                format!("{word} %{}: {ty} = {}", node.name, init_text(init))
            }
            NodeKind::Const { data } => {
                let items = |vs: &[f32]| -> String {
                    let items: Vec<String> = vs.iter().map(|&v| f32_text(v)).collect();
                    items.join(", ")
                };
                let head = format!("const %{}: {ty} = [", node.name);
                if data.len() <= CONST_INLINE {
                    format!("{head}{}]", items(data))
                } else {
                    let _ = writeln!(out, "{pad}{head}{}", loc_text(node));
                    let rows: Vec<String> =
                        data.chunks(const_row(&node.shape)).map(items).collect();
                    let _ = writeln!(out, "{pad}  {}", rows.join(&format!(",\n{pad}  ")));
                    let _ = writeln!(out, "{pad}]");
                    continue;
                }
            }
            NodeKind::Op { op, attrs } => {
                let mut s = format!("%{} = {}({})", node.name, op.name, args());
                if !attrs.is_empty() {
                    let items: Vec<String> =
                        attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let _ = write!(s, " {{{}}}", items.join(", "));
                }
                let _ = write!(s, ": {ty}");
                s
            }
            NodeKind::Fused { kind, body } => {
                let _ = writeln!(
                    out,
                    "{pad}%{} = fused {kind}({}): {ty} {{{}",
                    node.name,
                    args(),
                    loc_text(node)
                );
                write_body(out, body, depth + 1);
                let _ = writeln!(out, "{pad}}}");
                continue;
            }
        };
        let _ = writeln!(out, "{pad}{line}{}", loc_text(node));
    }
    for o in &graph.outputs {
        let _ = writeln!(
            out,
            "{pad}output %{} = %{}",
            o.name,
            graph.node(o.value).name
        );
    }
    for (from, to) in &graph.key_rules.renames {
        let _ = writeln!(out, "{pad}rename {from:?} => {to:?}");
    }
    for pat in &graph.key_rules.ignores {
        let _ = writeln!(out, "{pad}ignore {pat:?}");
    }
}

/// An error in IR text, with its 1-based line.
#[derive(Debug, Clone, PartialEq)]
pub struct TextError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for TextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// A tiny cursor over one line of IR text.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

type Res<T> = Result<T, String>;

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Cursor { s, pos: 0 }
    }
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }
    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.s.len() - trimmed.len();
    }
    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }
    fn expect(&mut self, tok: &str) -> Res<()> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(format!("expected `{tok}` at `{}`", self.rest()))
        }
    }
    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        self.skip_ws();
        let start = self.pos;
        let len: usize = self
            .rest()
            .chars()
            .take_while(|&c| f(c))
            .map(char::len_utf8)
            .sum();
        self.pos += len;
        &self.s[start..self.pos]
    }
    fn word(&mut self) -> Res<&'a str> {
        let w = self.take_while(|c| c.is_ascii_alphanumeric() || c == '_');
        if w.is_empty() {
            Err(format!("expected a word at `{}`", self.rest()))
        } else {
            Ok(w)
        }
    }
    fn value_name(&mut self) -> Res<&'a str> {
        self.expect("%")?;
        let w = self.take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '#'));
        if w.is_empty() {
            Err("expected a value name after `%`".into())
        } else {
            Ok(w)
        }
    }
    fn number(&mut self) -> Res<Attr> {
        let w = self.take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.'));
        if let Ok(i) = w.parse::<i64>() {
            return Ok(Attr::Int(i));
        }
        w.parse::<f64>()
            .map(Attr::Float)
            .map_err(|_| format!("expected a number, found `{w}`"))
    }
    fn float(&mut self) -> Res<f64> {
        match self.number()? {
            Attr::Int(i) => Ok(i as f64),
            Attr::Float(f) => Ok(f),
            _ => unreachable!("number() yields Int or Float"),
        }
    }
    fn f32(&mut self) -> Res<f32> {
        let w = self.take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.'));
        w.parse::<f32>()
            .map_err(|_| format!("expected an f32 element, found `{w}`"))
    }
    /// `v, v, ..., v]`: the elements of a constant after its opening `[`.
    fn f32_list(&mut self) -> Res<Vec<f32>> {
        let mut items = Vec::new();
        if self.eat("]") {
            return Ok(items);
        }
        loop {
            items.push(self.f32()?);
            if self.eat("]") {
                return Ok(items);
            }
            self.expect(",")?;
        }
    }
    fn string(&mut self) -> Res<String> {
        self.expect("\"")?;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, '0')) => out.push('\0'),
                    Some((_, c @ ('"' | '\\' | '\''))) => out.push(c),
                    Some((_, 'u')) => {
                        let rest: String = chars
                            .by_ref()
                            .map(|(_, c)| c)
                            .take_while(|&c| c != '}')
                            .collect();
                        let hex = rest.trim_start_matches('{');
                        let ch = u32::from_str_radix(hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or("bad unicode escape")?;
                        out.push(ch);
                    }
                    _ => return Err("bad escape in string".into()),
                },
                c => out.push(c),
            }
        }
        Err("unterminated string".into())
    }
    fn shape(&mut self) -> Res<(DType, Vec<usize>)> {
        let dt = self.word()?;
        let dtype = match dt {
            "f32" => DType::F32,
            other => return Err(format!("unknown dtype `{other}`")),
        };
        self.expect("[")?;
        let mut dims = Vec::new();
        if !self.eat("]") {
            loop {
                let w = self.take_while(|c| c.is_ascii_digit());
                dims.push(
                    w.parse::<usize>()
                        .map_err(|_| format!("bad dimension `{w}`"))?,
                );
                if self.eat("]") {
                    break;
                }
                self.expect(",")?;
            }
        }
        Ok((dtype, dims))
    }
    fn attr_value(&mut self) -> Res<Attr> {
        self.skip_ws();
        let rest = self.rest();
        if rest.starts_with('"') {
            return self.string().map(Attr::Str);
        }
        if rest.starts_with("true") || rest.starts_with("false") || rest.starts_with("none") {
            return Ok(match self.word()? {
                "true" => Attr::Bool(true),
                "false" => Attr::Bool(false),
                _ => Attr::None,
            });
        }
        if self.eat("[") {
            let mut items = Vec::new();
            if !self.eat("]") {
                loop {
                    items.push(self.number()?);
                    if self.eat("]") {
                        break;
                    }
                    self.expect(",")?;
                }
            }
            return if items.iter().all(|a| matches!(a, Attr::Int(_))) {
                Ok(Attr::Ints(
                    items
                        .into_iter()
                        .map(|a| match a {
                            Attr::Int(i) => i,
                            _ => unreachable!(),
                        })
                        .collect(),
                ))
            } else {
                Ok(Attr::Floats(
                    items
                        .into_iter()
                        .map(|a| match a {
                            Attr::Int(i) => i as f64,
                            Attr::Float(f) => f,
                            _ => unreachable!(),
                        })
                        .collect(),
                ))
            };
        }
        self.number()
    }
    fn init(&mut self) -> Res<Init> {
        let w = self.word()?;
        let arg = |c: &mut Self| -> Res<f64> {
            c.expect("(")?;
            let v = c.float()?;
            c.expect(")")?;
            Ok(v)
        };
        Ok(match w {
            "zeros" => Init::Zeros,
            "ones" => Init::Ones,
            "fill" => Init::Fill(arg(self)?),
            "uniform" => Init::Uniform(arg(self)?),
            "normal" => Init::Normal(arg(self)?),
            "trunc_normal" => Init::TruncNormal(arg(self)?),
            other => return Err(format!("unknown initialiser `{other}`")),
        })
    }
}

fn parse_location(s: &str) -> Res<Location> {
    let mut parts = s.trim().rsplitn(3, ':');
    let col = parts.next().and_then(|c| c.parse().ok());
    let line = parts.next().and_then(|l| l.parse().ok());
    match (parts.next(), line, col) {
        (Some(file), Some(line), Some(col)) => Ok(Location {
            file: file.to_string(),
            line,
            col,
        }),
        _ => Err(format!("bad location `{s}`")),
    }
}

/// Parses the text form back into a graph. Shapes are taken as written; run
/// [`super::verify`] to check them against the op table.
pub fn parse_text(text: &str) -> Result<Graph, TextError> {
    let mut graph = Graph::default();
    let mut by_name: HashMap<String, ValueId> = HashMap::new();
    let mut seen_header = false;
    let mut closed = false;
    let lines: Vec<&str> = text.lines().collect();
    let mut next = 0;
    while next < lines.len() {
        let (i, raw) = (next, lines[next]);
        next += 1;
        let line_no = i + 1;
        let err = |message: String| TextError {
            line: line_no,
            message,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        if closed {
            return Err(err("text after the closing `}`".into()));
        }
        if !seen_header {
            let name = line
                .strip_prefix("graph ")
                .and_then(|r| r.strip_suffix('{'))
                .map(str::trim)
                .ok_or_else(|| err("expected `graph NAME {`".into()))?;
            graph.name = name.to_string();
            seen_header = true;
            continue;
        }
        if line == "}" {
            closed = true;
            continue;
        }
        let (body, loc_part) = match line.split_once("  @ ") {
            Some((b, l)) => (b, Some(l)),
            None => (line, None),
        };
        let (loc, chain) = match loc_part {
            Some(l) => {
                let mut frames = l.split(" < ").map(parse_location);
                let first = frames.next().transpose().map_err(err)?;
                let chain = frames.collect::<Res<Vec<_>>>().map_err(err)?;
                (first, chain)
            }
            None => (None, Vec::new()),
        };
        let mut c = Cursor::new(body);
        let lookup =
            |by_name: &HashMap<String, ValueId>, name: &str| -> Result<ValueId, TextError> {
                by_name
                    .get(name)
                    .copied()
                    .ok_or_else(|| err(format!("use of undefined value `%{name}`")))
            };
        let define = |graph: &mut Graph,
                      by_name: &mut HashMap<String, ValueId>,
                      node: Node,
                      inputs: &[ValueId]|
         -> Result<ValueId, TextError> {
            if by_name.contains_key(&node.name) {
                return Err(err(format!("value `%{}` defined twice", node.name)));
            }
            let name = node.name.clone();
            let id = graph.add(node, inputs);
            by_name.insert(name, id);
            Ok(id)
        };
        // `(%a, %b, ...)`: the operands of an op or a fusion group.
        let operands = |c: &mut Cursor,
                        by_name: &HashMap<String, ValueId>|
         -> Result<Vec<ValueId>, TextError> {
            c.expect("(").map_err(err)?;
            let mut inputs = Vec::new();
            if !c.eat(")") {
                loop {
                    inputs.push(lookup(by_name, c.value_name().map_err(err)?)?);
                    if c.eat(")") {
                        break;
                    }
                    c.expect(",").map_err(err)?;
                }
            }
            Ok(inputs)
        };
        let first = c.rest().split_whitespace().next().unwrap_or("");
        match first {
            "input" | "param" | "buffer" => {
                c.word().map_err(err)?;
                let name = c.value_name().map_err(err)?.to_string();
                c.expect(":").map_err(err)?;
                let (dtype, shape) = c.shape().map_err(err)?;
                let kind = match first {
                    "input" => NodeKind::Input,
                    _ => {
                        c.expect("=").map_err(err)?;
                        let init = c.init().map_err(err)?;
                        let kind = if first == "param" {
                            ParamKind::Param
                        } else {
                            ParamKind::Buffer
                        };
                        NodeKind::Param { kind, init }
                    }
                };
                let is_input = matches!(kind, NodeKind::Input);
                let id = define(
                    &mut graph,
                    &mut by_name,
                    Node {
                        name,
                        kind,
                        shape,
                        dtype,
                        loc,
                        chain,
                    },
                    &[],
                )?;
                if is_input {
                    graph.inputs.push(id);
                }
            }
            "const" => {
                c.word().map_err(err)?;
                let name = c.value_name().map_err(err)?.to_string();
                c.expect(":").map_err(err)?;
                let (dtype, shape) = c.shape().map_err(err)?;
                c.expect("=").map_err(err)?;
                c.expect("[").map_err(err)?;
                c.skip_ws();
                let data = if c.rest().is_empty() {
                    // A long constant: element lines up to a line holding only `]`.
                    let start = next;
                    while next < lines.len() && lines[next].trim() != "]" {
                        next += 1;
                    }
                    if next == lines.len() {
                        return Err(err("constant is not closed with `]`".into()));
                    }
                    let elements = format!("{}]", lines[start..next].join(" "));
                    next += 1;
                    let mut e = Cursor::new(&elements);
                    let data = e.f32_list().map_err(err)?;
                    e.skip_ws();
                    if !e.rest().is_empty() {
                        return Err(err(format!("unexpected `{}` in constant", e.rest())));
                    }
                    data
                } else {
                    c.f32_list().map_err(err)?
                };
                let kind = NodeKind::Const { data };
                define(
                    &mut graph,
                    &mut by_name,
                    Node {
                        name,
                        kind,
                        shape,
                        dtype,
                        loc,
                        chain,
                    },
                    &[],
                )?;
            }
            "output" => {
                c.word().map_err(err)?;
                let name = c.value_name().map_err(err)?.to_string();
                c.expect("=").map_err(err)?;
                let value = lookup(&by_name, c.value_name().map_err(err)?)?;
                graph.outputs.push(Output { name, value });
            }
            "rename" => {
                c.word().map_err(err)?;
                let from = c.string().map_err(err)?;
                c.expect("=>").map_err(err)?;
                let to = c.string().map_err(err)?;
                graph.key_rules.renames.push((from, to));
            }
            "ignore" => {
                c.word().map_err(err)?;
                let pat = c.string().map_err(err)?;
                graph.key_rules.ignores.push(pat);
            }
            _ if body.contains(" = fused ") => {
                // `%v = fused KIND(%a, ...): T {` then the body, then `}` on its own line.
                let name = c.value_name().map_err(err)?.to_string();
                c.expect("=").map_err(err)?;
                c.expect("fused").map_err(err)?;
                let kind = c.word().map_err(err)?.to_string();
                let inputs = operands(&mut c, &by_name)?;
                c.expect(":").map_err(err)?;
                let (dtype, shape) = c.shape().map_err(err)?;
                c.expect("{").map_err(err)?;
                let start = next;
                let mut depth = 1;
                while next < lines.len() {
                    let l = lines[next].trim();
                    let l = l.split_once("  @ ").map_or(l, |(b, _)| b).trim_end();
                    next += 1;
                    if l == "}" {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    } else if l.ends_with('{') {
                        depth += 1;
                    }
                }
                if depth != 0 {
                    return Err(err("fusion body is not closed with `}`".into()));
                }
                let inner = format!(
                    "graph {kind} {{\n{}\n}}\n",
                    lines[start..next - 1].join("\n")
                );
                let body = parse_text(&inner).map_err(|e| TextError {
                    line: start + e.line - 1,
                    message: e.message,
                })?;
                let kind = NodeKind::Fused {
                    kind,
                    body: Box::new(body),
                };
                define(
                    &mut graph,
                    &mut by_name,
                    Node {
                        name,
                        kind,
                        shape,
                        dtype,
                        loc,
                        chain,
                    },
                    &inputs,
                )?;
                continue;
            }
            _ => {
                let name = c.value_name().map_err(err)?.to_string();
                c.expect("=").map_err(err)?;
                let op_name = c.word().map_err(err)?;
                let op =
                    ops::lookup(op_name).ok_or_else(|| err(format!("unknown op `{op_name}`")))?;
                let inputs = operands(&mut c, &by_name)?;
                let mut attrs = Attrs::new();
                if c.eat("{") && !c.eat("}") {
                    loop {
                        let key = c.word().map_err(err)?.to_string();
                        c.expect("=").map_err(err)?;
                        attrs.insert(key, c.attr_value().map_err(err)?);
                        if c.eat("}") {
                            break;
                        }
                        c.expect(",").map_err(err)?;
                    }
                }
                c.expect(":").map_err(err)?;
                let (dtype, shape) = c.shape().map_err(err)?;
                let kind = NodeKind::Op { op, attrs };
                define(
                    &mut graph,
                    &mut by_name,
                    Node {
                        name,
                        kind,
                        shape,
                        dtype,
                        loc,
                        chain,
                    },
                    &inputs,
                )?;
            }
        }
        c.skip_ws();
        if !c.rest().is_empty() {
            return Err(err(format!("unexpected `{}`", c.rest())));
        }
    }
    if !closed {
        return Err(TextError {
            line: text.lines().count(),
            message: "missing closing `}`".into(),
        });
    }
    Ok(graph)
}
