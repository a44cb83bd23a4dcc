//! `fold-output-scale`: a convolution or linear layer whose output is multiplied by a
//! constant per output channel, `conv2d(x, w, b) * s`, is one layer with `w' = w * s` (along
//! the weight's output axis) and `b' = b * s`. ConvNeXt's layer scale (`gamma`, after the
//! MLP's second projection) is the case that matters: folded, the block's tail becomes
//! `(x·w' + b') + shortcut`, a bias and residual the product's own epilogue applies, instead
//! of a multiply pass over the block's output. As with `fold-batch-norm`, `w'` and `b'` are a
//! small subgraph of the parameters, computed once when weights are bound.
//!
//! Fires when:
//! - the scale is computed from parameters and constants alone (not per inference);
//! - it varies along the output channels only (axis 1 of a convolution's `[N, C, H, W]`,
//!   the last axis of a linear layer's output), and does not broadcast the product to a
//!   larger shape;
//! - the layer's output has no other reader and is not a graph output.

use super::fusion::{add_op, input_dependent, must_be_written, Names};
use super::Pass;
use crate::ir::{Graph, ValueId};
use crate::ops::{Attr, Attrs};
use std::collections::HashSet;

pub struct FoldOutputScale;

/// A fold this pass can make: `mul` scales the output of `layer` by `scale`.
struct Fold {
    mul: ValueId,
    layer: ValueId,
    scale: ValueId,
}

/// The output axis of the layers this pass folds into: `None` for any other op.
fn channel_axis(graph: &Graph, layer: ValueId) -> Option<usize> {
    let rank = graph.node(layer).shape.len();
    match graph.node(layer).op()?.name {
        "conv2d" => Some(1),
        "linear" => Some(rank - 1),
        _ => None,
    }
}

/// What folding the product `mul` needs; `None` when it does not scale a layer's output,
/// `Err` with the reason when it does but cannot fold.
fn fold_for(
    graph: &Graph,
    dependent: &HashSet<ValueId>,
    mul: ValueId,
) -> Option<Result<Fold, String>> {
    if graph.node(mul).op()?.name != "mul" {
        return None;
    }
    let [a, b] = graph.inputs(mul)[..] else {
        return None;
    };
    let (layer, scale, axis) = [(a, b), (b, a)]
        .into_iter()
        .find_map(|(l, s)| Some((l, s, channel_axis(graph, l)?)))?;
    let why = |reason: String| {
        Some(Err(format!(
            "fold-output-scale: `{}` is not folded into `{}`: {reason}",
            graph.node(mul).name,
            graph.node(layer).name
        )))
    };
    if dependent.contains(&scale) {
        return why("the scale is computed per inference".into());
    }
    let out = &graph.node(layer).shape;
    if graph.node(mul).shape != *out {
        return why("the scale broadcasts the output to a larger shape".into());
    }
    // Right-aligned against the output, the scale's only non-1 axis is the channel axis.
    let scale_shape = &graph.node(scale).shape;
    let offset = out.len() - scale_shape.len();
    let per_channel = scale_shape
        .iter()
        .enumerate()
        .all(|(i, &d)| d == 1 || i + offset == axis);
    if !per_channel {
        return why(format!(
            "the scale {scale_shape:?} varies along more than the output channels of {out:?}"
        ));
    }
    if let Some(reason) = must_be_written(graph, layer) {
        return why(format!("{reason} unscaled"));
    }
    Some(Ok(Fold { mul, layer, scale }))
}

/// `value` reshaped to `shape` (a new node named `name`).
fn reshaped(
    graph: &mut Graph,
    like: ValueId,
    name: String,
    value: ValueId,
    shape: Vec<i64>,
) -> ValueId {
    let mut attrs = Attrs::new();
    attrs.insert("shape".into(), Attr::Ints(shape));
    add_op(graph, like, name, "reshape", attrs, &[value])
}

impl Pass for FoldOutputScale {
    fn name(&self) -> &'static str {
        "fold-output-scale"
    }

    fn description(&self) -> &'static str {
        "fold a constant per-channel scale of a convolution's or linear layer's output into its weight and bias"
    }

    fn explain(&self, graph: &Graph) -> Vec<String> {
        let dependent = input_dependent(graph);
        graph
            .topo_order()
            .into_iter()
            .filter_map(|mul| fold_for(graph, &dependent, mul)?.err())
            .collect()
    }

    fn run(&self, graph: &mut Graph) -> bool {
        // Folding only adds parameter-only nodes, so the per-inference set stays valid.
        let dependent = input_dependent(graph);
        // A layer scaled twice folds twice: its new values need fresh names.
        let mut names = Names::of(graph);
        let mut changed = false;
        for mul in graph.topo_order() {
            let Some(Ok(Fold { mul, layer, scale })) = fold_for(graph, &dependent, mul) else {
                continue;
            };
            let inputs = graph.inputs(layer);
            // One value per channel, or one for all of them.
            let values = graph.node(scale).shape.iter().product::<usize>() as i64;
            let base = graph.node(layer).name.clone();
            // Operand `position` (weight or bias) times the scale reshaped along its first
            // axis, the output channels of both layers' weights and biases.
            let mut scale_operand = |graph: &mut Graph, position: usize, what: &str| {
                let operand = inputs[position];
                let mut shape = vec![1i64; graph.node(operand).shape.len()];
                shape[0] = values;
                let name = names.fresh(&format!("{base}.{what}_scale"));
                let along = reshaped(graph, mul, name, scale, shape);
                let name = names.fresh(&format!("{base}.scaled_{what}"));
                let scaled = add_op(graph, mul, name, "mul", Attrs::new(), &[operand, along]);
                graph.set_input(layer, position, scaled);
            };
            scale_operand(graph, 1, "weight");
            if inputs.len() > 2 {
                scale_operand(graph, 2, "bias");
            }
            graph.replace_uses(mul, layer);
            graph.nodes.remove_node(mul);
            changed = true;
        }
        changed
    }
}
