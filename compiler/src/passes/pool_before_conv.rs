//! `pool-before-conv`: an average pool of a 1x1 convolution's output is the convolution of
//! the pooled input, `avg_pool(conv1x1(x, w, b)) = conv1x1(avg_pool(x), w, b)`: both are
//! linear per pixel and the pool's windows average the same pixels of every channel, so
//! the bias passes through unchanged. Pooling first runs the product on `1/(k_h·k_w)` of the
//! pixels. DenseNet's transitions (`BatchNorm -> ReLU -> conv 1x1 -> avg_pool 2x2`) are
//! where this is worth 3/4 of each transition's multiply-adds; the pool then reads the
//! wider input, a pass cheap beside the product it saves.
//!
//! Fires when the convolution is 1x1 with stride 1, no padding and no dilation (any
//! groups), is read only by the pool and is not a graph output, and the pool has no
//! padding and no `ceil_mode` windows (a padded or partial window would divide the bias
//! by a window size that no longer matches).

use super::fusion::{add_op, must_be_written, Names};
use super::Pass;
use crate::ir::{Graph, NodeKind, ValueId};
use crate::ops::AttrsExt;

pub struct PoolBeforeConv;

/// The convolution under `pool` that the pool can move before, if the rewrite applies.
fn conv_to_swap(graph: &Graph, pool: ValueId) -> Option<ValueId> {
    let NodeKind::Op { op, attrs } = &graph.node(pool).kind else {
        return None;
    };
    if op.name != "avg_pool2d" || attrs.ints("pad") != [0, 0] || attrs.flag("ceil_mode") {
        return None;
    }
    let conv = graph.inputs(pool)[0];
    let NodeKind::Op { op, attrs } = &graph.node(conv).kind else {
        return None;
    };
    let pointwise = op.name == "conv2d"
        && attrs.ints("k") == [1, 1]
        && attrs.ints("s") == [1, 1]
        && attrs.ints("pad") == [0, 0]
        && attrs.ints("dilation") == [1, 1];
    (pointwise && must_be_written(graph, conv).is_none()).then_some(conv)
}

impl Pass for PoolBeforeConv {
    fn name(&self) -> &'static str {
        "pool-before-conv"
    }

    fn description(&self) -> &'static str {
        "average-pool a 1x1 convolution's input instead of its output"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut names = Names::of(graph);
        let mut changed = false;
        for pool in graph.topo_order() {
            let Some(conv) = conv_to_swap(graph, pool) else {
                continue;
            };
            let NodeKind::Op { attrs, .. } = &graph.node(pool).kind else {
                continue;
            };
            let attrs = attrs.clone();
            let x = graph.inputs(conv)[0];
            let name = names.fresh(&format!("{}.pooled_input", graph.node(pool).name));
            let pooled = add_op(graph, pool, name, "avg_pool2d", attrs, &[x]);
            graph.set_input(conv, 0, pooled);
            // The convolution now yields the pooled shape; it takes the pool's place.
            graph.nodes[conv].shape = graph.node(pool).shape.clone();
            graph.replace_uses(pool, conv);
            graph.nodes.remove_node(pool);
            changed = true;
        }
        changed
    }
}
