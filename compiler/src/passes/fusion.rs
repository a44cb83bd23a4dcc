//! What the fusion passes share: growing a chain of elementwise consumers, explaining where a
//! chain stopped, and replacing a set of nodes by one fusion group holding them.

use crate::ir::{Graph, Node, NodeKind, Output, ValueId};
use std::collections::HashMap;

/// Ops applied element by element whose result has the shape of their chain operand.
pub const ELEMENTWISE: &[&str] = &[
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
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "abs",
    "add",
    "sub",
    "mul",
    "div",
    "maximum",
    "minimum",
    "pow",
];

pub fn is_elementwise(node: &Node) -> bool {
    node.op().is_some_and(|op| ELEMENTWISE.contains(&op.name))
}

/// The elementwise chain that only `start` feeds (excluding `start`), and why it stopped
/// when the next op was elementwise but could not join (`None` when it ended naturally).
pub fn chain_after(graph: &Graph, start: ValueId) -> (Vec<ValueId>, Option<String>) {
    let mut chain = Vec::new();
    let mut tail = start;
    loop {
        let users = graph.users(tail);
        let name = &graph.node(tail).name;
        let elementwise_user = users.iter().any(|&u| is_elementwise(graph.node(u)));
        if graph.outputs.iter().any(|o| o.value == tail) {
            let why = elementwise_user
                .then(|| format!("`{name}` is a graph output, so it must be written"));
            return (chain, why);
        }
        if users.len() != 1 {
            let why = elementwise_user.then(|| {
                let names: Vec<String> = users
                    .iter()
                    .map(|&u| format!("`{}`", graph.node(u).name))
                    .collect();
                format!(
                    "`{name}` has {} users ({}), so it must be written",
                    users.len(),
                    names.join(", ")
                )
            });
            return (chain, why);
        }
        let next = users[0];
        let node = graph.node(next);
        if !is_elementwise(node) {
            return (chain, None);
        }
        if node.shape != graph.node(tail).shape {
            let why = format!(
                "`{}` broadcasts `{name}` from {:?} to {:?}",
                node.name,
                graph.node(tail).shape,
                node.shape
            );
            return (chain, Some(why));
        }
        if graph.inputs(next).iter().filter(|&&i| i == tail).count() != 1 {
            return (chain, Some(format!("`{}` reads `{name}` twice", node.name)));
        }
        chain.push(next);
        tail = next;
    }
}

/// Replaces `members` (in topological order, each feeding only the next ones) by one fusion
/// group of `kind` named after the first member; returns the group.
pub fn make_group(graph: &mut Graph, members: &[ValueId], kind: &str) -> ValueId {
    // The body's inputs are the members' external operands, in order of first use.
    let mut operands: Vec<ValueId> = Vec::new();
    for &m in members {
        for src in graph.inputs(m) {
            if !members.contains(&src) && !operands.contains(&src) {
                operands.push(src);
            }
        }
    }
    let mut body = Graph::new(kind);
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
    for &m in members {
        let args: Vec<ValueId> = graph.inputs(m).iter().map(|src| map[src]).collect();
        let copy = body.add(graph.node(m).clone(), &args);
        map.insert(m, copy);
    }
    let last = *members.last().expect("a group has members");
    body.outputs.push(Output {
        name: "out".into(),
        value: map[&last],
    });
    let fused = Node {
        kind: NodeKind::Fused {
            kind: kind.to_string(),
            body: Box::new(body),
        },
        shape: graph.node(last).shape.clone(),
        ..graph.node(members[0]).clone()
    };
    let id = graph.add(fused, &operands);
    graph.replace_uses(last, id);
    for &m in members {
        graph.nodes.remove_node(m);
    }
    id
}
