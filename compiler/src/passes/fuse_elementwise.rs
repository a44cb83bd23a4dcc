//! `fuse-elementwise`: a chain of elementwise ops where each value feeds only the next one
//! becomes one fusion group, so the intermediate values are never written to memory. Runs
//! after `fuse-epilogue`, so it only takes the chains no contraction absorbed.
//!
//! A `concat` read only by such a chain heads it: the kernel reads each element from the
//! part that holds it, so the concatenation is never written either (DenseNet's
//! `concat -> BatchNorm -> ReLU` before each layer's convolution is one pass, not three).

use super::fusion::{chain_after, is_elementwise, make_group};
use super::Pass;
use crate::ir::Graph;

pub struct FuseElementwise;

impl Pass for FuseElementwise {
    fn name(&self) -> &'static str {
        "fuse-elementwise"
    }

    fn description(&self) -> &'static str {
        "fuse chains of elementwise ops into one kernel"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut changed = false;
        for start in graph.topo_order() {
            if !graph.nodes.contains_node(start) {
                continue;
            }
            let node = graph.node(start);
            if !is_elementwise(node) && node.op().map(|op| op.name) != Some("concat") {
                continue;
            }
            let (chain, _) = chain_after(graph, start);
            if chain.is_empty() {
                continue;
            }
            let members: Vec<_> = std::iter::once(start).chain(chain).collect();
            make_group(graph, &members, "elementwise");
            changed = true;
        }
        changed
    }
}
