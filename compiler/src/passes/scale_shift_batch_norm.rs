//! `scale-shift-batch-norm`: an inference BatchNorm that no convolution absorbed is
//! `x * s + t` per channel, with `s = gamma / sqrt(var + eps)` and `t = beta - mean * s` built
//! from the parameters (computed once when weights are bound, as `fold-batch-norm` does).
//!
//! As a `batch_norm2d` it is an op of its own that no chain joins, and its kernel computes
//! the square root and the division for every element. As a multiply and an add it is
//! elementwise: it joins the activation after it and whatever produced its input in one
//! kernel, at one multiply-add per element. DenseNet's pre-activation layers
//! (`concat -> BatchNorm -> ReLU -> conv`) are where this matters: the concat, the norm and
//! the ReLU become one pass over the layer's input instead of three.
//!
//! Runs after `fold-batch-norm` (so every norm a convolution can take is folded first) and
//! after `fuse-fff` (which applies DenseNet's norms per concat part, by their parameters).

use super::fold_batch_norm::{bn_scale, bn_shift};
use super::fusion::{add_op, Names};
use super::Pass;
use crate::ir::{Graph, NodeKind};
use crate::ops::{Attr, Attrs, AttrsExt};

pub struct ScaleShiftBatchNorm;

impl Pass for ScaleShiftBatchNorm {
    fn name(&self) -> &'static str {
        "scale-shift-batch-norm"
    }

    fn description(&self) -> &'static str {
        "rewrite a BatchNorm no convolution absorbed as a per-channel multiply-add"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut changed = false;
        let mut names = Names::of(graph);
        for bn in graph.topo_order() {
            let NodeKind::Op { op, attrs } = &graph.node(bn).kind else {
                continue;
            };
            if op.name != "batch_norm2d" {
                continue;
            }
            let eps = attrs.float("eps");
            let x = graph.inputs(bn)[0];
            let rank = graph.node(x).shape.len();
            let channels = graph.node(x).shape[1] as i64;
            let base = graph.node(bn).name.clone();
            let scale = bn_scale(graph, &mut names, bn, eps, &base);
            let shift = bn_shift(graph, &mut names, bn, &base, scale, None);
            // One value per channel, broadcast over the axes after it.
            let per_channel: Vec<i64> = std::iter::once(channels)
                .chain(std::iter::repeat_n(1, rank - 2))
                .collect();
            let mut reshape = |graph: &mut Graph, v, suffix: &str| {
                let mut shape = Attrs::new();
                shape.insert("shape".into(), Attr::Ints(per_channel.clone()));
                let name = names.fresh(&format!("{base}.{suffix}"));
                add_op(graph, bn, name, "reshape", shape, &[v])
            };
            let scale = reshape(graph, scale, "scale_c");
            let shift = reshape(graph, shift, "shift_c");
            let scaled_name = names.fresh(&format!("{base}.scaled"));
            let scaled = add_op(graph, bn, scaled_name, "mul", Attrs::new(), &[x, scale]);
            // The shifted value takes the norm's name (it is the same value); the norm goes.
            let y = add_op(graph, bn, base, "add", Attrs::new(), &[scaled, shift]);
            graph.replace_uses(bn, y);
            graph.nodes.remove_node(bn);
            changed = true;
        }
        changed
    }
}
