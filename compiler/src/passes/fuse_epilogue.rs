//! `fuse-epilogue`: a contraction (`conv2d`, `conv1d`, `linear`, `matmul`, `conv_transpose2d`)
//! and the chain of elementwise ops that consume only its result (activation, layer scale,
//! residual add, ...) become one fusion group, so a code generator can apply the chain while
//! the contraction's output tile is still in cache. The chain grows while each value has
//! exactly one user, is not a graph output, and the next op keeps its shape or is a layout
//! change (`permute`), which the kernel applies by storing each element at its permuted
//! position; ConvNeXt's `permute(fc2 * gamma, [0, 3, 1, 2])` and the residual add after it
//! join this way. A transposed convolution scatters its product into its own layout
//! (col2im), so its chain stops before a `permute`.

use super::fusion::{chain_after, make_group};
use super::Pass;
use crate::ir::{Graph, ValueId};

pub struct FuseEpilogue;

/// The contractions a group may start with; their kernels apply the chain to each output tile.
pub(super) const ANCHORS: &[&str] = &["conv2d", "conv1d", "linear", "matmul"];

/// Contractions whose kernels scatter their product (col2im): they anchor a group too, but
/// cannot store through a layout change.
const SCATTERING: &[&str] = &["conv_transpose2d"];

fn is_anchor(graph: &Graph, id: ValueId) -> bool {
    graph.nodes.contains_node(id)
        && graph
            .node(id)
            .op()
            .is_some_and(|op| ANCHORS.contains(&op.name) || SCATTERING.contains(&op.name))
}

/// The chain `chain_after` finds after `anchor`, cut before the first `permute` where the
/// anchor scatters its product; with why it stops early, if it does.
fn epilogue_chain(graph: &Graph, anchor: ValueId) -> (Vec<ValueId>, Option<String>) {
    let (mut chain, why) = chain_after(graph, anchor);
    let scatters = graph
        .node(anchor)
        .op()
        .is_some_and(|op| SCATTERING.contains(&op.name));
    let permute = chain
        .iter()
        .position(|&n| graph.node(n).op().is_some_and(|op| op.name == "permute"));
    match permute {
        Some(at) if scatters => {
            let why = format!(
                "`{}` is a layout change, which a transposed convolution's scatter cannot store through",
                graph.node(chain[at]).name
            );
            chain.truncate(at);
            (chain, Some(why))
        }
        _ => (chain, why),
    }
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
            let (chain, _) = epilogue_chain(graph, anchor);
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
                let (_, why) = epilogue_chain(graph, a);
                why.map(|w| format!("fuse-epilogue: `{}` stops early: {w}", graph.node(a).name))
            })
            .collect()
    }
}
