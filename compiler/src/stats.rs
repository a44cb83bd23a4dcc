//! Static cost model of a Graph IR, like `torchinfo`: per-op parameters, FLOPs and activation
//! sizes, and the peak live activation memory of running the graph in topological order.
//!
//! Accounting rules:
//! - Every op node is one layer; the interpreter materialises every op output (layout ops
//!   included), so every op output counts as an activation of `numel * 4` bytes (f32).
//! - A parameter or buffer is attributed to its first consumer in topological order, so shared
//!   tensors are counted once. Learned parameters and buffers are totalled separately.
//! - FLOPs come from each op's `flops` function (a multiply-add counts as 2).
//! - Peak memory covers op outputs only: a value is live from the step that produces it until
//!   the step of its last consumer (graph outputs stay live to the end), and during a step the
//!   op's operands and its result are live together. Graph inputs are excluded and reported as
//!   [`Stats::input_bytes`]; parameters and buffers are excluded (see [`Stats::params`]).
//! - A folded constant (`NodeKind::Const`, at most a few KiB) is data of the compiled model,
//!   neither an activation nor a state_dict entry, and is not counted.

use crate::ir::{Graph, NodeKind, ValueId};
use crate::ops::{ArgType, ParamKind};
use std::collections::HashMap;

/// Bytes per element: everything computes in f32.
const F32_BYTES: u64 = 4;

/// Costs of one op node.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// The node's name (its source path).
    pub name: String,
    pub op: String,
    pub shape: Vec<usize>,
    /// Learned parameter elements attributed to this node.
    pub params: u64,
    /// Buffer elements attributed to this node.
    pub buffers: u64,
    pub flops: u64,
    /// Size of the output in bytes.
    pub activation_bytes: u64,
}

/// Costs of a group of layers sharing a name prefix (see [`Stats::grouped`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// The shared prefix: the first `depth` `.`-separated segments of the layers' names.
    pub name: String,
    /// The op when the group has one layer.
    pub op: Option<String>,
    /// Number of op nodes in the group.
    pub ops: usize,
    /// Output shape of the group's last layer in topological order.
    pub shape: Vec<usize>,
    pub params: u64,
    pub buffers: u64,
    pub flops: u64,
    pub activation_bytes: u64,
}

/// Costs of a whole graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// One entry per op node, in topological order.
    pub layers: Vec<Layer>,
    /// Learned parameter elements.
    pub params: u64,
    /// Buffer elements (e.g. BatchNorm running statistics).
    pub buffers: u64,
    pub flops: u64,
    /// Sum of all op outputs, in bytes.
    pub activation_bytes: u64,
    /// Sum of the graph inputs, in bytes (not part of the activation figures).
    pub input_bytes: u64,
    /// Peak bytes of simultaneously live op outputs.
    pub peak_bytes: u64,
    /// The op running when the peak is reached.
    pub peak_at: Option<String>,
    /// Kernels one inference launches: op and fusion nodes that depend on a graph input
    /// (values computed from weights alone are prepared once, not per inference).
    pub kernels: usize,
    /// Bytes those kernels write that are read again by another kernel (not graph outputs).
    pub intermediate_bytes: u64,
}

/// Kernel count and intermediate bytes of `graph`: see [`Stats::kernels`].
fn kernel_counts(graph: &Graph, order: &[ValueId]) -> (usize, u64) {
    let mut per_inference: std::collections::HashSet<ValueId> = std::collections::HashSet::new();
    let (mut kernels, mut bytes_written) = (0, 0);
    for &id in order {
        let node = graph.node(id);
        let depends = match node.kind {
            NodeKind::Input => true,
            NodeKind::Param { .. } => false,
            _ => graph.inputs(id).iter().any(|i| per_inference.contains(i)),
        };
        if !depends {
            continue;
        }
        per_inference.insert(id);
        if matches!(node.kind, NodeKind::Op { .. } | NodeKind::Fused { .. }) {
            kernels += 1;
            if !graph.outputs.iter().any(|o| o.value == id) {
                bytes_written += bytes(&node.shape);
            }
        }
    }
    (kernels, bytes_written)
}

impl Stats {
    /// Layers aggregated by the first `depth` segments of their names (at least one), in order
    /// of first appearance.
    pub fn grouped(&self, depth: usize) -> Vec<Group> {
        let depth = depth.max(1);
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for l in &self.layers {
            let name = l.name.split('.').take(depth).collect::<Vec<_>>().join(".");
            let i = *index.entry(name.clone()).or_insert_with(|| {
                groups.push(Group {
                    name,
                    op: Some(l.op.clone()),
                    ops: 0,
                    shape: Vec::new(),
                    params: 0,
                    buffers: 0,
                    flops: 0,
                    activation_bytes: 0,
                });
                groups.len() - 1
            });
            let g = &mut groups[i];
            g.ops += 1;
            if g.ops > 1 {
                g.op = None;
            }
            g.shape = l.shape.clone();
            g.params += l.params;
            g.buffers += l.buffers;
            g.flops += l.flops;
            g.activation_bytes += l.activation_bytes;
        }
        groups
    }
}

fn bytes(shape: &[usize]) -> u64 {
    shape.iter().map(|&d| d as u64).product::<u64>() * F32_BYTES
}

/// Computes the costs of `graph`.
pub fn stats(graph: &Graph) -> Stats {
    let order = graph.topo_order();
    // Last step at which each value is needed; outputs are needed past the end.
    let mut last_use: HashMap<ValueId, usize> = HashMap::new();
    for (step, &id) in order.iter().enumerate() {
        for input in graph.inputs(id) {
            last_use.insert(input, step);
        }
    }
    for o in &graph.outputs {
        last_use.insert(o.value, order.len());
    }
    let mut frees: Vec<Vec<ValueId>> = vec![Vec::new(); order.len() + 1];
    for (&id, &step) in &last_use {
        frees[step].push(id);
    }

    let mut s = Stats {
        layers: Vec::new(),
        params: 0,
        buffers: 0,
        flops: 0,
        activation_bytes: 0,
        input_bytes: 0,
        peak_bytes: 0,
        peak_at: None,
        kernels: 0,
        intermediate_bytes: 0,
    };
    (s.kernels, s.intermediate_bytes) = kernel_counts(graph, &order);
    let mut attributed: std::collections::HashSet<ValueId> = std::collections::HashSet::new();
    let mut live: u64 = 0;
    for (step, &id) in order.iter().enumerate() {
        let node = graph.node(id);
        match &node.kind {
            NodeKind::Input => s.input_bytes += bytes(&node.shape),
            NodeKind::Param { kind, .. } => match kind {
                ParamKind::Param => s.params += node.numel() as u64,
                ParamKind::Buffer => s.buffers += node.numel() as u64,
            },
            NodeKind::Const { .. } => {}
            NodeKind::Op { .. } | NodeKind::Fused { .. } => {
                let operands = graph.inputs(id);
                let (op_name, flops) = match &node.kind {
                    NodeKind::Op { op, attrs } => {
                        let shapes: Vec<Vec<usize>> = operands
                            .iter()
                            .map(|&i| graph.node(i).shape.clone())
                            .collect();
                        // Tensor arguments come first, owned parameters after (as the
                        // verifier splits).
                        let n_data = if op.args.iter().any(|a| a.ty == ArgType::Tensors) {
                            shapes.len()
                        } else {
                            op.args
                                .iter()
                                .filter(|a| a.ty == ArgType::Tensor)
                                .count()
                                .min(shapes.len())
                        };
                        (
                            op.name.to_string(),
                            (op.flops)(attrs, &shapes[..n_data], &node.shape),
                        )
                    }
                    NodeKind::Fused { kind, body } => (format!("fused {kind}"), stats(body).flops),
                    _ => unreachable!("matched above"),
                };
                let (mut params, mut buffers) = (0, 0);
                for &i in &operands {
                    let p = graph.node(i);
                    if let NodeKind::Param { kind, .. } = p.kind {
                        if attributed.insert(i) {
                            match kind {
                                ParamKind::Param => params += p.numel() as u64,
                                ParamKind::Buffer => buffers += p.numel() as u64,
                            }
                        }
                    }
                }
                let out = bytes(&node.shape);
                s.flops += flops;
                s.activation_bytes += out;
                live += out;
                if live > s.peak_bytes {
                    s.peak_bytes = live;
                    s.peak_at = Some(node.name.clone());
                }
                s.layers.push(Layer {
                    name: node.name.clone(),
                    op: op_name,
                    shape: node.shape.clone(),
                    params,
                    buffers,
                    flops,
                    activation_bytes: out,
                });
            }
        }
        for &dead in &frees[step] {
            let n = graph.node(dead);
            if matches!(n.kind, NodeKind::Op { .. } | NodeKind::Fused { .. }) {
                live -= bytes(&n.shape);
            }
        }
        // An op output nobody consumes is freed right after it is produced.
        if matches!(node.kind, NodeKind::Op { .. } | NodeKind::Fused { .. })
            && !last_use.contains_key(&id)
        {
            live -= bytes(&node.shape);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elab::{Options, Program};

    const SPEC: &str = r#"
model tiny() {
    input x: f32[B=2, 4];
    h = linear(x, out=8);
    a = relu(h);
    o = linear(a, out=3);
    output y = o;
}
"#;

    fn graph() -> Graph {
        let program = Program::from_source("tiny.bb", SPEC).unwrap_or_else(|_| panic!("parses"));
        program
            .elaborate(&Options::default())
            .unwrap_or_else(|d| panic!("elaborates: {:?}", d))
            .graph
    }

    #[test]
    fn counts_params_flops_and_activations() {
        let s = stats(&graph());
        assert_eq!(s.layers.len(), 3);
        assert_eq!(s.params, (4 * 8 + 8) + (8 * 3 + 3));
        assert_eq!(s.buffers, 0);
        assert_eq!(s.input_bytes, 2 * 4 * 4);
        let out: Vec<u64> = s.layers.iter().map(|l| l.activation_bytes).collect();
        assert_eq!(out, [64, 64, 24]);
        assert_eq!(s.activation_bytes, 152);
        // Each layer's params are attributed to it alone.
        let params: Vec<u64> = s.layers.iter().map(|l| l.params).collect();
        assert_eq!(params, [40, 0, 27]);
        assert_eq!(s.flops, s.layers.iter().map(|l| l.flops).sum::<u64>());
        assert!(s.layers[0].flops >= 2 * 2 * 4 * 8, "{:?}", s.layers[0]);
    }

    #[test]
    fn peak_is_the_largest_live_set() {
        // relu runs with h and a live (128); the last linear with a and y live (88).
        let s = stats(&graph());
        assert_eq!(s.peak_bytes, 128);
        assert_eq!(s.peak_at.as_deref(), Some(s.layers[1].name.as_str()));
    }

    #[test]
    fn grouping_by_depth_sums_layers() {
        let s = stats(&graph());
        let g = s.grouped(1);
        assert_eq!(g.len(), 3);
        assert_eq!(g.iter().map(|g| g.params).sum::<u64>(), s.params);
        let all = Stats {
            layers: s
                .layers
                .iter()
                .map(|l| Layer {
                    name: format!("net.{}", l.name),
                    ..l.clone()
                })
                .collect(),
            ..s.clone()
        };
        let g = all.grouped(1);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].ops, 3);
        assert_eq!(g[0].op, None);
        assert_eq!(g[0].shape, vec![2, 3]);
        assert_eq!(g[0].flops, s.flops);
    }
}
