//! Graphviz DOT rendering of a Graph IR, for `bbc graph`.
//!
//! One box per op (name, op, output shape); graph inputs are green ellipses and graph outputs
//! orange ellipses. Parameters, buffers and folded constants are not drawn: each is listed in
//! the label of every op that consumes it (by its key relative to the op's name when it has
//! that prefix), so the picture shows the dataflow only. Nodes are emitted in topological
//! order with ids `n<index>`.

use super::{Graph, NodeKind};
use crate::ops::ParamKind;
use std::fmt::Write;

/// Escapes text for a double-quoted DOT string; `\n` in the result is a DOT line break.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn shape(dims: &[usize]) -> String {
    let dims: Vec<String> = dims.iter().map(usize::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// Renders `graph` as a Graphviz `digraph`.
pub fn to_dot(graph: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", escape(&graph.name));
    out.push_str("  rankdir=TB;\n");
    out.push_str("  node [shape=box, style=\"rounded,filled\", fillcolor=\"#f4f4f4\", fontname=\"Helvetica\", fontsize=10];\n");
    out.push_str("  edge [fontname=\"Helvetica\", fontsize=9, color=\"#555555\"];\n");
    let mut edges = String::new();
    for id in graph.topo_order() {
        let node = graph.node(id);
        let nid = format!("n{}", id.index());
        match &node.kind {
            NodeKind::Param { .. } | NodeKind::Const { .. } => continue,
            NodeKind::Input => {
                let label = format!("{}\ninput {}{}", node.name, node.dtype, shape(&node.shape));
                let _ = writeln!(
                    out,
                    "  {nid} [label=\"{}\", shape=ellipse, fillcolor=\"#cdeccd\"];",
                    escape(&label)
                );
            }
            NodeKind::Op { .. } | NodeKind::Fused { .. } => {
                let what = match &node.kind {
                    NodeKind::Op { op, .. } => op.name.to_string(),
                    NodeKind::Fused { kind, .. } => format!("fused {kind}"),
                    _ => unreachable!("matched above"),
                };
                let mut label = format!("{}\n{what}  {}", node.name, shape(&node.shape));
                for input in graph.inputs(id) {
                    let src = graph.node(input);
                    let leaf_tag = match &src.kind {
                        NodeKind::Param { kind, .. } => Some(match kind {
                            ParamKind::Param => "",
                            ParamKind::Buffer => " (buffer)",
                        }),
                        NodeKind::Const { .. } => Some(" (const)"),
                        _ => None,
                    };
                    match leaf_tag {
                        Some(tag) => {
                            let key = src
                                .name
                                .strip_prefix(&node.name)
                                .and_then(|k| k.strip_prefix('.'))
                                .unwrap_or(&src.name);
                            let _ = write!(label, "\n{key}{tag} {}", shape(&src.shape));
                        }
                        None => {
                            let _ = writeln!(edges, "  n{} -> {nid};", input.index());
                        }
                    }
                }
                let _ = writeln!(out, "  {nid} [label=\"{}\"];", escape(&label));
            }
        }
    }
    for (i, o) in graph.outputs.iter().enumerate() {
        let oid = format!("out{i}");
        let label = format!("{}\noutput", o.name);
        let _ = writeln!(
            out,
            "  {oid} [label=\"{}\", shape=ellipse, fillcolor=\"#fddcb5\"];",
            escape(&label)
        );
        let _ = writeln!(edges, "  n{} -> {oid};", o.value.index());
    }
    out.push_str(&edges);
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elab::{Options, Program};

    #[test]
    fn folds_params_and_marks_inputs_and_outputs() {
        let spec = "model m() {\n    input x: f32[B=1, 4];\n    h = linear(x, out=2);\n    output y = h;\n}\n";
        let program = Program::from_source("m.bb", spec).unwrap_or_else(|_| panic!("parses"));
        let graph = program
            .elaborate(&Options::default())
            .unwrap_or_else(|d| panic!("elaborates: {d:?}"))
            .graph;
        let dot = to_dot(&graph);
        assert!(dot.starts_with("digraph \"m\" {"), "{dot}");
        assert!(dot.contains("input f32[1, 4]"), "{dot}");
        assert!(dot.contains("\\nweight [2, 4]"), "{dot}");
        assert!(dot.contains("y\\noutput"), "{dot}");
        assert!(!dot.contains("h.weight"), "params are folded: {dot}");
        assert_eq!(dot.matches("->").count(), 2, "{dot}");
    }

    #[test]
    fn lists_folded_constants_like_params() {
        let graph = crate::ir::parse_text(
            "graph g {\n  input %x: f32[2]\n  const %x.shift: f32[2] = [0.5, -1.0]\n  \
             %y = add(%x, %x.shift): f32[2]\n  output %y = %y\n}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let dot = to_dot(&graph);
        assert!(dot.contains("\\nx.shift (const) [2]"), "{dot}");
        assert_eq!(dot.matches("->").count(), 2, "{dot}");
    }

    #[test]
    fn escapes_quotes() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
