//! `simplify`: local algebraic and layout identities. A reshape, permute or expand that
//! leaves its input as it is goes away; two permutes compose into one, and two reshapes into
//! one; `x * 1`, `x / 1`, `x + 0` and `x - 0` with a scalar constant become `x` when the
//! broadcast does not change the shape.

use super::Pass;
use crate::ir::{Graph, NodeKind, ValueId};
use crate::ops::{Attr, AttrsExt};

pub struct SimplifyLayout;

/// The constant value of a `full` node, if `id` is one.
fn constant(graph: &Graph, id: ValueId) -> Option<f64> {
    match &graph.node(id).kind {
        NodeKind::Op { op, attrs } if op.name == "full" => Some(attrs.float("value")),
        _ => None,
    }
}

/// The value `id` can be replaced by, if it is an identity.
fn identity_of(graph: &Graph, id: ValueId) -> Option<ValueId> {
    let node = graph.node(id);
    let NodeKind::Op { op, attrs } = &node.kind else {
        return None;
    };
    let inputs = graph.inputs(id);
    let same_shape = |v: ValueId| graph.node(v).shape == node.shape;
    match op.name {
        "reshape" | "expand" | "flatten" if same_shape(inputs[0]) => Some(inputs[0]),
        "permute"
            if attrs.ints("dims").iter().enumerate().all(|(i, &d)| {
                d as usize == i || d == i as i64 - attrs.ints("dims").len() as i64
            }) =>
        {
            Some(inputs[0])
        }
        "mul" | "div" => match (constant(graph, inputs[1]), constant(graph, inputs[0])) {
            (Some(c), _) if c == 1.0 && same_shape(inputs[0]) => Some(inputs[0]),
            (_, Some(c)) if c == 1.0 && op.name == "mul" && same_shape(inputs[1]) => {
                Some(inputs[1])
            }
            _ => None,
        },
        "add" | "sub" => match (constant(graph, inputs[1]), constant(graph, inputs[0])) {
            (Some(c), _) if c == 0.0 && same_shape(inputs[0]) => Some(inputs[0]),
            (_, Some(c)) if c == 0.0 && op.name == "add" && same_shape(inputs[1]) => {
                Some(inputs[1])
            }
            _ => None,
        },
        _ => None,
    }
}

/// Folds `outer(inner(x))` for two reshapes or two permutes by rewriting `outer` to read `x`.
fn compose(graph: &mut Graph, outer: ValueId) -> bool {
    let Some(op) = graph
        .node(outer)
        .op()
        .filter(|op| matches!(op.name, "reshape" | "permute"))
    else {
        return false;
    };
    let inner = graph.inputs(outer)[0];
    if graph.node(inner).op().map(|o| o.name) != Some(op.name) {
        return false;
    }
    let source = graph.inputs(inner)[0];
    match op.name {
        "reshape" => {
            // The outer reshape's target (resolved) is all that matters.
            let shape: Vec<i64> = graph.node(outer).shape.iter().map(|&d| d as i64).collect();
            set_attr(graph, outer, "shape", Attr::Ints(shape));
        }
        "permute" => {
            let rank = graph.node(outer).shape.len() as i64;
            let norm = |d: i64| {
                if d < 0 {
                    (d + rank) as usize
                } else {
                    d as usize
                }
            };
            let (NodeKind::Op { attrs: a_in, .. }, NodeKind::Op { attrs: a_out, .. }) =
                (&graph.node(inner).kind, &graph.node(outer).kind)
            else {
                return false;
            };
            let (p_in, p_out) = (a_in.ints("dims").to_vec(), a_out.ints("dims").to_vec());
            let composed: Vec<i64> = p_out.iter().map(|&d| norm(p_in[norm(d)]) as i64).collect();
            set_attr(graph, outer, "dims", Attr::Ints(composed));
        }
        _ => return false,
    }
    graph.set_input(outer, 0, source);
    true
}

fn set_attr(graph: &mut Graph, id: ValueId, key: &str, value: Attr) {
    if let NodeKind::Op { attrs, .. } = &mut graph.nodes[id].kind {
        attrs.insert(key.to_string(), value);
    }
}

impl Pass for SimplifyLayout {
    fn name(&self) -> &'static str {
        "simplify"
    }

    fn description(&self) -> &'static str {
        "remove identity reshapes/permutes/expands and x*1, x+0; compose reshape and permute chains"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut changed = false;
        for id in graph.topo_order() {
            if compose(graph, id) {
                changed = true;
            }
            if let Some(replacement) = identity_of(graph, id) {
                graph.replace_uses(id, replacement);
                graph.nodes.remove_node(id);
                changed = true;
            }
        }
        changed
    }
}
