//! `fuse-epilogue`: a contraction (`conv2d`, `conv1d`, `linear`, `matmul`) and the chain of
//! elementwise ops that consume only its result (activation, layer scale, residual add, ...)
//! become one fusion group, so a code generator can apply the chain while the contraction's
//! output tile is still in cache. The chain grows while each value has exactly one user, is
//! not a graph output, and the next op keeps its shape or is a layout change (`permute`),
//! which the kernel applies by storing each element at its permuted position; ConvNeXt's
//! `permute(fc2 * gamma, [0, 3, 1, 2])` and the residual add after it join this way.

use super::fusion::{chain_after, make_group};
use super::Pass;
use crate::ir::{Graph, ValueId};

pub struct FuseEpilogue;

/// The contractions a group may start with; their kernels apply the chain to each output tile.
pub(super) const ANCHORS: &[&str] = &["conv2d", "conv1d", "linear", "matmul"];

fn is_anchor(graph: &Graph, id: ValueId) -> bool {
    graph.nodes.contains_node(id)
        && graph
            .node(id)
            .op()
            .is_some_and(|op| ANCHORS.contains(&op.name))
}

impl Pass for FuseEpilogue {
    fn name(&self) -> &'static str {
        "fuse-epilogue"
    }

    fn description(&self) -> &'static str {
        "fuse conv/linear/matmul with the elementwise chain after it (activation, scale, residual)"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut changed = false;
        for anchor in graph.topo_order() {
            if !is_anchor(graph, anchor) {
                continue;
            }
            let (chain, _) = chain_after(graph, anchor);
            if chain.is_empty() {
                continue;
            }
            let members: Vec<ValueId> = std::iter::once(anchor).chain(chain).collect();
            make_group(graph, &members, "epilogue");
            changed = true;
        }
        changed
    }

    fn explain(&self, graph: &Graph) -> Vec<String> {
        graph
            .topo_order()
            .into_iter()
            .filter(|&a| is_anchor(graph, a))
            .filter_map(|a| {
                let (_, why) = chain_after(graph, a);
                why.map(|w| format!("fuse-epilogue: `{}` stops early: {w}", graph.node(a).name))
            })
            .collect()
    }
}
