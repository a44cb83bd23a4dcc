//! What the fusion passes share: growing a chain of elementwise consumers (and layout changes,
//! which a kernel applies as it stores), explaining where a chain stopped, replacing a set of
//! nodes by one fusion group holding them, telling values computed per inference from those
//! prepared once from the weights, and adding the new ops a rewrite needs.

use crate::ir::{DType, Graph, Node, NodeKind, Output, ValueId};
use crate::ops::{self, Attrs};
use std::collections::{HashMap, HashSet};

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

/// A layout change: the same elements in another axis order. Values are stored row-major in
/// the order of their axes, so a `permute` is the IR's explicit change of physical layout.
pub fn is_layout_change(node: &Node) -> bool {
    node.op().is_some_and(|op| op.name == "permute")
}

/// Whether `node` can continue a chain: an elementwise op, or a layout change, which the
/// kernel applies by storing each element at its permuted position (the chain goes on in the
/// new axis order, so e.g. a residual add after it joins too).
fn joins_chain(node: &Node) -> bool {
    is_elementwise(node) || is_layout_change(node)
}

/// Most ops in one group built from a chain (its start included). A group's kernel is
/// one expression nested as deep as its chain, which lowering and code generation walk
/// recursively: a chain of 3000 ReLUs overflowed the 8 MiB main-thread stack, and an
/// embedding program's threads may have 2 MiB. 128 keeps that far off and costs nothing
/// measurable: a chain this long is one pass over memory per 128 ops instead of one.
pub const MAX_CHAIN: usize = 128;

/// The chain of elementwise ops and layout changes that only `start` feeds (excluding
/// `start`), and why it stopped when the next op could have joined but did not (`None` when
/// it ended naturally).
pub fn chain_after(graph: &Graph, start: ValueId) -> (Vec<ValueId>, Option<String>) {
    let mut chain = Vec::new();
    let mut tail = start;
    loop {
        let users = graph.users(tail);
        let name = &graph.node(tail).name;
        if let Some(why) = must_be_written(graph, tail) {
            let joinable_user = users.iter().any(|&u| joins_chain(graph.node(u)));
            return (chain, joinable_user.then_some(why));
        }
        let next = users[0];
        let node = graph.node(next);
        if !joins_chain(node) {
            return (chain, None);
        }
        if is_elementwise(node) && node.shape != graph.node(tail).shape {
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
        if chain.len() + 1 >= MAX_CHAIN {
            let why = format!(
                "`{}` would make the group longer than {MAX_CHAIN} ops, so it starts the next one",
                node.name
            );
            return (chain, Some(why));
        }
        chain.push(next);
        tail = next;
    }
}

/// Replaces `members` (in topological order, each feeding only the next ones) by one fusion
/// group of `kind` named after the first member; returns the group.
pub fn make_group(graph: &mut Graph, members: &[ValueId], kind: &str) -> ValueId {
    make_group_named(graph, members, kind, members[0])
}

/// As [`make_group`], the group taking its name and source location from the member
/// `named_after` (the op that defines the kernel, when operand reads come before it).
pub fn make_group_named(
    graph: &mut Graph,
    members: &[ValueId],
    kind: &str,
    named_after: ValueId,
) -> ValueId {
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
        ..graph.node(named_after).clone()
    };
    let id = graph.add(fused, &operands);
    graph.replace_uses(last, id);
    for &m in members {
        graph.nodes.remove_node(m);
    }
    id
}

/// Why `id` cannot stay inside a fusion group (it is a graph output, or it has other than
/// exactly one user), or `None` when a group may keep it in registers.
pub fn must_be_written(graph: &Graph, id: ValueId) -> Option<String> {
    let name = &graph.node(id).name;
    if graph.outputs.iter().any(|o| o.value == id) {
        return Some(format!("`{name}` is a graph output, so it must be written"));
    }
    let users = graph.users(id);
    (users.len() != 1).then(|| {
        let names: Vec<String> = users
            .iter()
            .map(|&u| format!("`{}`", graph.node(u).name))
            .collect();
        format!(
            "`{name}` has {} users ({}), so it must be written",
            users.len(),
            names.join(", ")
        )
    })
}

/// The values computed per inference: graph inputs and everything that reads one. The rest
/// (parameters, constants and ops over them alone) is prepared once when weights are bound.
pub fn input_dependent(graph: &Graph) -> HashSet<ValueId> {
    let mut dependent = HashSet::new();
    for id in graph.topo_order() {
        let reads_input = match graph.node(id).kind {
            NodeKind::Input => true,
            _ => graph.inputs(id).iter().any(|i| dependent.contains(i)),
        };
        if reads_input {
            dependent.insert(id);
        }
    }
    dependent
}

/// Whether `id` is computed per inference (a member of [`input_dependent`]), found by walking
/// only its ancestors: for a question about one value, such as whether a scale is prepared
/// once, where the whole graph's set would be rebuilt for every candidate.
pub fn reads_input(graph: &Graph, id: ValueId) -> bool {
    let mut seen = HashSet::new();
    let mut stack = vec![id];
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        if matches!(graph.node(v).kind, NodeKind::Input) {
            return true;
        }
        stack.extend(graph.inputs(v));
    }
    false
}

/// `base`, or `base_1`, `base_2`, ... : the first name no value of `graph` has.
pub fn fresh_name(graph: &Graph, base: &str) -> String {
    Names::of(graph).fresh(base)
}

/// The names taken in a graph, for a rewrite that adds many values: collecting them once
/// keeps naming each new value cheap.
pub struct Names(HashSet<String>);

impl Names {
    pub fn of(graph: &Graph) -> Names {
        Names(graph.nodes.node_weights().map(|n| n.name.clone()).collect())
    }

    /// `base`, or `base_1`, `base_2`, ... : the first name not taken yet, now taken.
    pub fn fresh(&mut self, base: &str) -> String {
        let name = std::iter::once(base.to_string())
            .chain((1..).map(|i| format!("{base}_{i}")))
            .find(|n| !self.0.contains(n))
            .expect("an unbounded sequence of names has a free one");
        self.0.insert(name.clone());
        name
    }
}

/// Adds `op(inputs)` with `attrs`, named `name`, located where `like` is; the shape comes
/// from the op table.
pub fn add_op(
    graph: &mut Graph,
    like: ValueId,
    name: String,
    op: &str,
    attrs: Attrs,
    inputs: &[ValueId],
) -> ValueId {
    let def = ops::lookup(op).expect("op used by a pass is in the table");
    let shapes: Vec<_> = inputs
        .iter()
        .map(|&i| graph.node(i).shape.clone())
        .collect();
    let shape = (def.shape)(&attrs, &shapes).expect("a pass builds well-shaped ops");
    let template = graph.node(like);
    let node = Node {
        name,
        kind: NodeKind::Op { op: def, attrs },
        shape,
        dtype: DType::F32,
        loc: template.loc.clone(),
        chain: template.chain.clone(),
    };
    graph.add(node, inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::parse_text;

    #[test]
    fn reading_the_input_is_decided_by_ancestors_alone() {
        let g = parse_text(
            "graph t {
  input %x: f32[1, 4]
  param %w: f32[1, 4] = uniform(1.0)
  param %s: f32[1] = uniform(1.0)
  %ws = mul(%w, %s): f32[1, 4]
  %y = add(%x, %ws): f32[1, 4]
  %z = mul(%y, %s): f32[1, 4]
  output %o = %z
}",
        )
        .expect("valid IR");
        let dependent = input_dependent(&g);
        for id in g.nodes.node_indices() {
            assert_eq!(
                reads_input(&g, id),
                dependent.contains(&id),
                "{}",
                g.node(id).name
            );
        }
        let by_name = |n: &str| g.find(n).expect("named value");
        assert!(!reads_input(&g, by_name("ws")));
        assert!(reads_input(&g, by_name("z")));
    }
}
