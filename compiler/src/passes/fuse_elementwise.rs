//! `fuse-elementwise`: a chain of elementwise ops where each value feeds only the next one
//! becomes one fusion group, so the intermediate values are never written to memory. Runs
//! after `fuse-epilogue`, so it only takes the chains no contraction absorbed.
//!
//! A `concat` read only by such a chain heads it: the kernel reads each element from the
//! part that holds it, so the concatenation is never written either (DenseNet's
//! `concat -> BatchNorm -> ReLU` before each layer's convolution is one pass, not three).
//!
//! A Haar transform read only by a `slice` heads a group with it, so only the sliced
//! elements are computed: WaveCNet's downsampling keeps the LL band of `haar_dwt`, a quarter
//! of its channels, and computing all four bands to keep one made its stem's transform a
//! full pass over four times the output.

use super::fusion::{chain_after, is_elementwise, make_group, must_be_written};
use super::Pass;
use crate::ir::{Graph, ValueId};

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
            let op = node.op().map(|op| op.name);
            let members: Vec<_> = if let Some(slice) = sliced_transform(graph, start) {
                let (chain, _) = chain_after(graph, slice);
                [start, slice].into_iter().chain(chain).collect()
            } else if is_elementwise(node) || op == Some("concat") {
                let (chain, _) = chain_after(graph, start);
                if chain.is_empty() {
                    continue;
                }
                std::iter::once(start).chain(chain).collect()
            } else {
                continue;
            };
            make_group(graph, &members, "elementwise");
            changed = true;
        }
        changed
    }
}

/// The `slice` that alone reads `id`, when `id` is a Haar transform (computed element by
/// element from its input, so its group computes just what the slice keeps).
fn sliced_transform(graph: &Graph, id: ValueId) -> Option<ValueId> {
    let op = graph.node(id).op()?.name;
    if !matches!(op, "haar_dwt" | "haar_idwt") || must_be_written(graph, id).is_some() {
        return None;
    }
    let slice = graph.users(id)[0];
    let reads_once = graph.inputs(slice).iter().filter(|&&i| i == id).count() == 1;
    (graph.node(slice).op()?.name == "slice" && reads_once).then_some(slice)
}
