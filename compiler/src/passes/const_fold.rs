//! `const-fold`: an op whose operands depend on no graph input and no parameter (generators
//! such as `full` and `coord_grid`, stored constants, and ops computed only from them) is
//! evaluated at compile time with the op table's reference implementation, so the folded value
//! is exactly what the interpreter would compute. The op is then replaced in place (same name,
//! location and users) by its value:
//!
//! - every element equal: a `full` of the op's shape, which is compact at any size and which
//!   `simplify` recognises (`x * 1`, `x + 0` on a folded one or zero disappear);
//! - otherwise, up to [`MAX_STORED`] elements: a `const` node holding the data (4 KiB at most,
//!   a few dozen lines of the text form);
//! - larger values stay as the subgraph that generates them. That subgraph is already a compact
//!   description, and since it reads no input it is evaluated once when the model is loaded
//!   (`bbc stats` never counts it as a per-inference kernel), so storing its data would only
//!   grow the IR. `bbc ir --explain` lists these.
//!
//! Generators on their own are left alone: folding applies only where an op disappears.

use super::Pass;
use crate::ir::{Graph, NodeKind, ValueId};
use crate::ops::{self, Attr, Attrs};
use bbc_runtime::Tensor;
use std::collections::{HashMap, HashSet};

pub struct ConstFold;

/// The most elements of a folded value that is not uniform that the graph stores as a `const`.
pub const MAX_STORED: usize = 1024;

/// The most elements evaluated at compile time, per value (4 MiB), bounding compile time and
/// memory; larger values are left to load time.
const MAX_EVALUATED: usize = 1 << 20;

/// What happens to one op whose operands are all known at compile time.
enum Fold {
    /// Every element is this value: the op becomes a `full`.
    Uniform(f32),
    /// The op becomes a stored constant with these elements.
    Stored(Vec<f32>),
    /// The op stays, for this reason.
    Kept(String),
}

/// The value of a compile-time leaf (a generator or a stored constant), unless too large.
fn leaf_value(graph: &Graph, id: ValueId) -> Option<Tensor> {
    let node = graph.node(id);
    if node.numel() > MAX_EVALUATED {
        return None;
    }
    match &node.kind {
        NodeKind::Const { data } => {
            Tensor::from_shape_vec(node.shape.as_slice(), data.clone()).ok()
        }
        NodeKind::Op { op, attrs } => Some((op.eval)(attrs, &[])),
        _ => None,
    }
}

/// Decides, in topological order, what happens to every op computed from compile-time values
/// only. Values are evaluated on demand and kept for the ops that read them.
fn plan(graph: &Graph) -> Vec<(ValueId, Fold)> {
    let mut known: HashSet<ValueId> = HashSet::new();
    // `None`: known at compile time but too large to evaluate.
    let mut values: HashMap<ValueId, Option<Tensor>> = HashMap::new();
    let mut folds = Vec::new();
    for id in graph.topo_order() {
        let node = graph.node(id);
        let operands = graph.inputs(id);
        let (op, attrs) = match &node.kind {
            NodeKind::Const { .. } => {
                known.insert(id);
                continue;
            }
            NodeKind::Op { op, attrs } if operands.iter().all(|o| known.contains(o)) => (op, attrs),
            _ => continue,
        };
        known.insert(id);
        if operands.is_empty() {
            continue;
        }
        for &o in &operands {
            values.entry(o).or_insert_with(|| leaf_value(graph, o));
        }
        let too_large = operands
            .iter()
            .map(|&o| (o, graph.node(o)))
            .find(|(o, _)| values[o].is_none())
            .map(|(_, n)| (n.name.clone(), n.numel()))
            .or_else(|| (node.numel() > MAX_EVALUATED).then(|| (node.name.clone(), node.numel())));
        if let Some((name, numel)) = too_large {
            let why = format!(
                "const-fold: `{}` depends on no input or parameter, but `{name}` has {numel} \
                 elements, more than the {MAX_EVALUATED} evaluated at compile time; it is \
                 computed when the model is loaded",
                node.name
            );
            values.insert(id, None);
            folds.push((id, Fold::Kept(why)));
            continue;
        }
        let args: Vec<&Tensor> = operands
            .iter()
            .map(|o| values[o].as_ref().expect("checked above"))
            .collect();
        let value = (op.eval)(attrs, &args);
        let first = value.iter().next().copied().unwrap_or(0.0);
        let fold = if value.iter().all(|v| v.to_bits() == first.to_bits()) {
            Fold::Uniform(first)
        } else if value.len() <= MAX_STORED {
            Fold::Stored(value.iter().copied().collect())
        } else {
            Fold::Kept(format!(
                "const-fold: `{}` ({} elements) depends on no input or parameter but stays a \
                 subgraph: a stored constant holds at most {MAX_STORED} elements, and the \
                 subgraph is evaluated once when the model is loaded, never per inference",
                node.name,
                value.len()
            ))
        };
        values.insert(id, Some(value));
        folds.push((id, fold));
    }
    folds
}

impl Pass for ConstFold {
    fn name(&self) -> &'static str {
        "const-fold"
    }

    fn description(&self) -> &'static str {
        "evaluate ops that read only compile-time values (generators, constants) into constants"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut changed = false;
        for (id, fold) in plan(graph) {
            let kind = match fold {
                Fold::Uniform(value) => {
                    let full = ops::lookup("full").expect("`full` is in the op table");
                    let shape = graph.node(id).shape.iter().map(|&d| d as i64).collect();
                    let mut attrs = Attrs::new();
                    attrs.insert("shape".into(), Attr::Ints(shape));
                    attrs.insert("value".into(), Attr::Float(f64::from(value)));
                    NodeKind::Op { op: full, attrs }
                }
                Fold::Stored(data) => NodeKind::Const { data },
                Fold::Kept(_) => continue,
            };
            graph.clear_inputs(id);
            graph.nodes[id].kind = kind;
            changed = true;
        }
        changed
    }

    /// The values left unfolded where they meet the rest of the graph (a chain of kept
    /// layout ops is reported once, at its end).
    fn explain(&self, graph: &Graph) -> Vec<String> {
        let folds = plan(graph);
        let planned: HashSet<ValueId> = folds.iter().map(|(id, _)| *id).collect();
        let is_boundary = |id: ValueId| {
            graph.outputs.iter().any(|o| o.value == id)
                || graph.users(id).iter().any(|u| !planned.contains(u))
        };
        folds
            .into_iter()
            .filter_map(|(id, fold)| match fold {
                Fold::Kept(why) if is_boundary(id) => Some(why),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{parse_text, print_text, verify};

    fn folded(text: &str) -> Graph {
        let mut graph = parse_text(text).expect("test IR parses");
        assert!(ConstFold.run(&mut graph), "nothing folded");
        assert!(verify(&graph).is_empty(), "{:?}", verify(&graph));
        graph
    }

    /// Stored constants print (inline when short, over several lines when long) and parse
    /// back unchanged, bit for bit.
    #[test]
    fn stored_constants_round_trip_through_text() {
        let graph = folded(
            "graph t {
  input %x: f32[1, 2, 4, 8]
  %grid = coord_grid() {h=4, hi=1.0, lo=-1.0, w=8}: f32[2, 4, 8]
  %grid4 = reshape(%grid) {shape=[1, 2, 4, 8]}: f32[1, 2, 4, 8]
  %row = slice(%grid) {axis=2, end=3, start=0, step=1}: f32[2, 4, 3]
  %third = full() {shape=[], value=3.0}: f32[]
  %ratio = div(%row, %third): f32[2, 4, 3]
  %y = add(%x, %grid4): f32[1, 2, 4, 8]
  output %y = %y
  output %r = %ratio
}
",
        );
        let text = print_text(&graph);
        // Whole rows of the last axis per line: 64 elements of rows of 8 in 4 lines of 16;
        // 24 elements of rows of 3 in lines of 15 and 9.
        let element_lines = |head: &str| -> Vec<usize> {
            let body = text.split(head).nth(1).expect("constant printed");
            let body = body.split_once('\n').expect("header line").1;
            let body = body.split("\n  ]").next().expect("closing line");
            body.lines()
                .map(|l| l.split(',').filter(|v| !v.trim().is_empty()).count())
                .collect()
        };
        assert_eq!(element_lines("const %grid4: f32[1, 2, 4, 8] = ["), [16; 4]);
        assert_eq!(element_lines("const %ratio: f32[2, 4, 3] = ["), [15, 9]);
        let parsed = parse_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(print_text(&parsed), text);
        let bits = |g: &Graph, name: &str| match &g.node(g.find(name).expect("node")).kind {
            NodeKind::Const { data } => data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            other => panic!("{name} is {other:?}"),
        };
        assert_eq!(bits(&parsed, "grid4"), bits(&graph, "grid4"));
        assert_eq!(bits(&parsed, "ratio"), bits(&graph, "ratio"));
        assert_eq!(bits(&graph, "ratio").len(), 24);
    }

    #[test]
    fn large_values_stay_and_are_explained() {
        let text = "graph t {
  input %x: f32[1, 2, 40, 40]
  %grid = coord_grid() {h=40, hi=1.0, lo=-1.0, w=40}: f32[2, 40, 40]
  %grid4 = reshape(%grid) {shape=[1, 2, 40, 40]}: f32[1, 2, 40, 40]
  %y = add(%x, %grid4): f32[1, 2, 40, 40]
  output %y = %y
}
";
        let mut graph = parse_text(text).expect("parses");
        let why = ConstFold.explain(&graph);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].starts_with("const-fold: `grid4` (3200 elements)"),
            "{why:?}"
        );
        assert!(!ConstFold.run(&mut graph));
        assert_eq!(print_text(&graph), print_text(&parse_text(text).unwrap()));
    }
}
