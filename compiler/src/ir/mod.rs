//! The Graph IR: a petgraph DAG of op applications where every value has a static shape and
//! dtype, a stable name derived from the source's parameter paths, and the source location
//! (with its chain of block instantiations) that produced it.
//!
//! One node is one value. Parameters and buffers are nodes too (like FX's `get_attr`): their
//! name is their state_dict key. An edge's weight is the operand position at its consumer.

mod dot;
mod text;
mod verify;

pub use dot::to_dot;
pub use text::{parse_text, print_text};
pub use verify::verify;

use crate::ops::{Attrs, Init, OpDef, ParamKind, Shape};
use bbc_grammar::Location;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

pub type ValueId = NodeIndex;

/// Element type of a value. Everything computes in f32 today; the type is carried so that
/// checkpoints and future integer inputs (token ids) are checked, not assumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
        })
    }
}

#[derive(Clone, Debug)]
pub enum NodeKind {
    /// A graph input, fed by the caller.
    Input,
    /// A learned parameter or saved buffer; `Node::name` is its state_dict key.
    Param { kind: ParamKind, init: Init },
    /// A value known at compile time (left by `const-fold`): its elements in row-major order
    /// for `Node::shape`. It is part of the compiled model, not of the state_dict.
    Const { data: Vec<f32> },
    /// An application of an op from the table to this node's inputs.
    Op { op: &'static OpDef, attrs: Attrs },
    /// A fusion group: one kernel computing `body`, a graph whose inputs are this node's
    /// operands in order and whose single output is this node's value. The interpreter runs
    /// the body, so every fusion is checked by the oracle.
    Fused { kind: String, body: Box<Graph> },
}

#[derive(Clone, Debug)]
pub struct Node {
    /// Unique in the graph; for params the state_dict key.
    pub name: String,
    pub kind: NodeKind,
    pub shape: Shape,
    pub dtype: DType,
    /// Where the value was written in the source, if it came from source.
    pub loc: Option<Location>,
    /// Call sites of the enclosing block instantiations, innermost first.
    pub chain: Vec<Location>,
}

impl Node {
    pub fn op(&self) -> Option<&'static OpDef> {
        match &self.kind {
            NodeKind::Op { op, .. } => Some(op),
            _ => None,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A named graph output.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub value: ValueId,
}

/// Checkpoint key rewriting declared by the model (`rename` / `ignore`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyRules {
    /// `(regex, replacement)`, applied in order to every checkpoint key.
    pub renames: Vec<(String, String)>,
    /// Keys matching any of these (after renaming) are dropped.
    pub ignores: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub nodes: StableDiGraph<Node, usize>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<Output>,
    pub key_rules: KeyRules,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    pub fn add(&mut self, node: Node, inputs: &[ValueId]) -> ValueId {
        let id = self.nodes.add_node(node);
        for (pos, &src) in inputs.iter().enumerate() {
            self.nodes.add_edge(src, id, pos);
        }
        id
    }

    pub fn node(&self, id: ValueId) -> &Node {
        &self.nodes[id]
    }

    /// Operands of `id` in position order.
    pub fn inputs(&self, id: ValueId) -> Vec<ValueId> {
        let mut edges: Vec<(usize, ValueId)> = self
            .nodes
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        edges.sort_unstable();
        edges.into_iter().map(|(_, src)| src).collect()
    }

    /// Parameter and buffer nodes, sorted by key.
    pub fn params(&self) -> Vec<ValueId> {
        let mut ps: Vec<ValueId> = self
            .nodes
            .node_indices()
            .filter(|&n| matches!(self.nodes[n].kind, NodeKind::Param { .. }))
            .collect();
        ps.sort_by(|a, b| self.nodes[*a].name.cmp(&self.nodes[*b].name));
        ps
    }

    /// Nodes in a deterministic topological order (ties broken by insertion order).
    pub fn topo_order(&self) -> Vec<ValueId> {
        let mut indegree: std::collections::HashMap<ValueId, usize> = self
            .nodes
            .node_indices()
            .map(|n| (n, self.nodes.edges_directed(n, Direction::Incoming).count()))
            .collect();
        let mut ready: std::collections::BTreeSet<ValueId> = indegree
            .iter()
            .filter(|(_, &d)| d == 0)
            .map(|(&n, _)| n)
            .collect();
        let mut order = Vec::with_capacity(indegree.len());
        while let Some(n) = ready.pop_first() {
            order.push(n);
            for e in self.nodes.edges_directed(n, Direction::Outgoing) {
                let d = indegree
                    .get_mut(&e.target())
                    .expect("edge to a node of this graph");
                *d -= 1;
                if *d == 0 {
                    ready.insert(e.target());
                }
            }
        }
        order
    }

    /// Makes every consumer of `old` (and every output naming it) read `new` instead.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        let uses: Vec<(ValueId, usize)> = self
            .nodes
            .edges_directed(old, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight()))
            .collect();
        for (consumer, pos) in uses {
            if let Some(edge) = self.nodes.find_edge(old, consumer) {
                self.nodes.remove_edge(edge);
            }
            self.nodes.add_edge(new, consumer, pos);
        }
        for o in &mut self.outputs {
            if o.value == old {
                o.value = new;
            }
        }
    }

    /// Makes operand `pos` of `node` read `src` (adding the operand if it is new).
    pub fn set_input(&mut self, node: ValueId, pos: usize, src: ValueId) {
        let old: Vec<_> = self
            .nodes
            .edges_directed(node, Direction::Incoming)
            .filter(|e| *e.weight() == pos)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.nodes.remove_edge(e);
        }
        self.nodes.add_edge(src, node, pos);
    }

    /// Removes every operand edge of `id`, leaving its users as they are (for a value that
    /// becomes a leaf, or a dead one whose operands should no longer count it as a user).
    pub fn clear_inputs(&mut self, id: ValueId) {
        let edges: Vec<_> = self
            .nodes
            .edges_directed(id, Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for e in edges {
            self.nodes.remove_edge(e);
        }
    }

    /// Values that read `id`.
    pub fn users(&self, id: ValueId) -> Vec<ValueId> {
        self.nodes
            .neighbors_directed(id, Direction::Outgoing)
            .collect()
    }

    pub fn find(&self, name: &str) -> Option<ValueId> {
        self.nodes
            .node_indices()
            .find(|&n| self.nodes[n].name == name)
    }
}
