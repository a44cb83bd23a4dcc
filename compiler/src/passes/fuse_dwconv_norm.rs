//! `fuse-dwconv-norm`: ConvNeXt's depthwise convolution followed by a LayerNorm over the
//! channels (`layer_norm2d`, or `permute` to channels-last then `layer_norm`) becomes one
//! fusion group: a kernel computes all channels of a pixel's k x k depthwise sum and
//! normalises them before writing anything.

use super::fusion::make_group;
use super::Pass;
use crate::ir::{Graph, NodeKind, ValueId};
use crate::ops::AttrsExt;

pub struct FuseDwconvNorm;

fn op_name(graph: &Graph, id: ValueId) -> Option<&'static str> {
    graph.node(id).op().map(|op| op.name)
}

/// The single user of `id`, unless `id` is a graph output or has several.
fn only_user(graph: &Graph, id: ValueId) -> Option<ValueId> {
    let users = graph.users(id);
    (users.len() == 1 && !graph.outputs.iter().any(|o| o.value == id)).then(|| users[0])
}

fn is_depthwise(graph: &Graph, id: ValueId) -> bool {
    let node = graph.node(id);
    match &node.kind {
        NodeKind::Op { op, attrs } if op.name == "conv2d" => {
            let channels = graph.node(graph.inputs(id)[0]).shape[1] as i64;
            attrs.int("groups") == channels && attrs.int("out") == channels
        }
        _ => false,
    }
}

/// The nodes to fuse after a depthwise conv: the norm, and the permute before it if any.
fn norm_after(graph: &Graph, conv: ValueId) -> Option<Vec<ValueId>> {
    let next = only_user(graph, conv)?;
    match op_name(graph, next)? {
        "layer_norm2d" => Some(vec![next]),
        "permute" => {
            let NodeKind::Op { attrs, .. } = &graph.node(next).kind else {
                return None;
            };
            let norm = only_user(graph, next)?;
            (attrs.ints("dims") == [0, 2, 3, 1] && op_name(graph, norm) == Some("layer_norm"))
                .then(|| vec![next, norm])
        }
        _ => None,
    }
}

impl Pass for FuseDwconvNorm {
    fn name(&self) -> &'static str {
        "fuse-dwconv-norm"
    }

    fn description(&self) -> &'static str {
        "fuse a depthwise conv with the LayerNorm over channels that follows it (ConvNeXt)"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut changed = false;
        for conv in graph.topo_order() {
            if !graph.nodes.contains_node(conv) || !is_depthwise(graph, conv) {
                continue;
            }
            if let Some(rest) = norm_after(graph, conv) {
                let members: Vec<ValueId> = std::iter::once(conv).chain(rest).collect();
                make_group(graph, &members, "dwconv_norm");
                changed = true;
            }
        }
        changed
    }

    fn explain(&self, graph: &Graph) -> Vec<String> {
        graph
            .topo_order()
            .into_iter()
            .filter(|&c| is_depthwise(graph, c) && norm_after(graph, c).is_none())
            .filter(|&c| graph.users(c).iter().any(|&u| matches!(op_name(graph, u), Some("layer_norm2d" | "permute"))))
            .map(|c| {
                format!(
                    "fuse-dwconv-norm: `{}` is not fused with its LayerNorm: the conv's result has {} users or is an output",
                    graph.node(c).name,
                    graph.users(c).len()
                )
            })
            .collect()
    }
}
