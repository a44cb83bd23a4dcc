//! `fuse-epilogue`: a contraction (`conv2d`, `linear`, `matmul`) and the chain of
//! elementwise ops that consume only its result (activation, layer scale, residual add, ...)
//! become one fusion group, so a code generator can apply the chain while the contraction's
//! output tile is still in cache. The chain grows while each value has exactly one user, is
//! not a graph output, and the next op keeps its shape.

use super::Pass;
use crate::ir::{Graph, Node, NodeKind, Output, ValueId};
use std::collections::HashMap;

pub struct FuseEpilogue;

const ANCHORS: &[&str] = &["conv2d", "conv1d", "linear", "matmul"];
const ELEMENTWISE: &[&str] = &[
    "relu",
    "relu6",
    "gelu",
    "silu",
    "sigmoid",
    "tanh",
    "elu",
    "hardswish",
    "clamp",
    "neg",
    "add",
    "sub",
    "mul",
    "div",
    "maximum",
    "minimum",
];

/// The chain to fuse after `anchor` (excluding it); empty when nothing follows.
fn chain_after(graph: &Graph, anchor: ValueId) -> Vec<ValueId> {
    let is_output = |v: ValueId| graph.outputs.iter().any(|o| o.value == v);
    let mut chain = Vec::new();
    let mut tail = anchor;
    loop {
        let users = graph.users(tail);
        if users.len() != 1 || is_output(tail) {
            break;
        }
        let next = users[0];
        let node = graph.node(next);
        let fusible = node.op().is_some_and(|op| ELEMENTWISE.contains(&op.name))
            && node.shape == graph.node(tail).shape
            // The chain value must enter once (`x * x` would read it twice).
            && graph.inputs(next).iter().filter(|&&i| i == tail).count() == 1;
        if !fusible {
            break;
        }
        chain.push(next);
        tail = next;
    }
    chain
}

impl Pass for FuseEpilogue {
    fn name(&self) -> &'static str {
        "fuse-epilogue"
    }

    fn description(&self) -> &'static str {
        "fuse conv/linear/matmul with the elementwise chain after it (bias, activation, scale, residual)"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut changed = false;
        for anchor in graph.topo_order() {
            if !graph.nodes.contains_node(anchor)
                || !graph
                    .node(anchor)
                    .op()
                    .is_some_and(|op| ANCHORS.contains(&op.name))
            {
                continue;
            }
            let chain = chain_after(graph, anchor);
            if chain.is_empty() {
                continue;
            }
            let members: Vec<ValueId> = std::iter::once(anchor)
                .chain(chain.iter().copied())
                .collect();
            // The body's inputs are the chain's external operands, in order of first use.
            let mut operands: Vec<ValueId> = Vec::new();
            for &m in &members {
                for src in graph.inputs(m) {
                    if !members.contains(&src) && !operands.contains(&src) {
                        operands.push(src);
                    }
                }
            }
            let mut body = Graph::new("epilogue");
            let mut map: HashMap<ValueId, ValueId> = HashMap::new();
            for (i, &src) in operands.iter().enumerate() {
                let outer = graph.node(src);
                let input = Node {
                    name: format!("in{i}"),
                    kind: NodeKind::Input,
                    shape: outer.shape.clone(),
                    dtype: outer.dtype,
                    loc: None,
                    chain: Vec::new(),
                };
                let v = body.add(input, &[]);
                body.inputs.push(v);
                map.insert(src, v);
            }
            for &m in &members {
                let args: Vec<ValueId> = graph.inputs(m).iter().map(|src| map[src]).collect();
                let copy = body.add(graph.node(m).clone(), &args);
                map.insert(m, copy);
            }
            let last = *members.last().expect("anchor is a member");
            body.outputs.push(Output {
                name: "out".into(),
                value: map[&last],
            });
            let template = graph.node(anchor).clone();
            let fused = Node {
                kind: NodeKind::Fused {
                    kind: "epilogue".into(),
                    body: Box::new(body),
                },
                shape: graph.node(last).shape.clone(),
                ..template
            };
            let id = graph.add(fused, &operands);
            graph.replace_uses(last, id);
            for m in members {
                graph.nodes.remove_node(m);
            }
            changed = true;
        }
        changed
    }
}
