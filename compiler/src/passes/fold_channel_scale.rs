//! `fold-channel-scale`: a pointwise convolution of an input scaled per channel,
//! `conv2d(x * s, w)` with `s` one value per input channel, is `conv2d(x, w * s)`: the scale
//! moves onto the weight's input-channel axis. Squeeze-and-excitation ends this way
//! (EfficientNet's `x * sigmoid(...)` feeding the projecting 1x1 convolution), and there the
//! scaled input is the block's widest tensor while the weight is small: the rewrite trades a
//! pass over `C·H·W` activations for `C_out·C` multiplies per inference.
//!
//! Fires when:
//! - the convolution is 1x1, stride 1, no padding, one group (so every input element meets
//!   the weight once, and the scaled weight stays a plain matrix product's operand);
//! - `s` varies along the channel axis only (per image it would need a weight per image);
//! - the product `x * s` has no other reader and is not a graph output;
//! - scaling the weight is clearly cheaper: `3·C_out < N·H·W`. A weight computed per
//!   inference cannot be packed once at load time: the CPU backend then runs the product
//!   on a GEMM that packs it on every call instead of its pre-packed kernels. Measured on
//!   EfficientNet-B0 (2 threads, fastest of each layer over four alternated runs), its
//!   14x14 projections (80 or 112 output channels over 196 pixels) took 0.12 and 0.18 ms
//!   with the scaled weight and 0.08 and 0.15 with the input scaled (plus 0.02 ms for the
//!   scaling): the model's layers 6.69 -> 6.49 ms. At 28x28 and above, where `C_out` is
//!   a twentieth of the pixels or less, the fold still saves the pass.

use super::fusion::{add_op, must_be_written, Names};
use super::Pass;
use crate::ir::{Graph, NodeKind, ValueId};
use crate::ops::{Attr, Attrs, AttrsExt};

pub struct FoldChannelScale;

/// What folding `conv` needs: the mul it reads, the unscaled input and the per-channel
/// scale. `None` when `conv` does not read a product; `Err` with the reason it cannot fold.
fn scale_to_fold(
    graph: &Graph,
    conv: ValueId,
) -> Option<Result<(ValueId, ValueId, ValueId), String>> {
    let node = graph.node(conv);
    let attrs = match &node.kind {
        NodeKind::Op { op, attrs, .. } if op.name == "conv2d" => attrs,
        _ => return None,
    };
    let mul = graph.inputs(conv)[0];
    if graph.node(mul).op().map(|o| o.name) != Some("mul") {
        return None;
    }
    let why = |reason: String| {
        Some(Err(format!(
            "fold-channel-scale: `{}` is not folded into `{}`: {reason}",
            graph.node(mul).name,
            node.name
        )))
    };
    let x_shape = &graph.node(mul).shape;
    let [batch, channels, h, w] = x_shape[..] else {
        return why(format!(
            "the product has shape {x_shape:?}, not [N, C, H, W]"
        ));
    };
    let pointwise = attrs.ints("k") == [1, 1]
        && attrs.ints("s") == [1, 1]
        && attrs.ints("pad") == [0, 0]
        && attrs.int("groups") == 1;
    if !pointwise {
        return why("the convolution is not 1x1, stride 1, unpadded and ungrouped".into());
    }
    // One operand is the activation (the product's shape), the other the channel scale.
    let [a, b] = graph.inputs(mul)[..] else {
        return None;
    };
    // `[1, C, 1, 1]` or `[C, 1, 1]`: channels, and ones everywhere else.
    let per_channel = |v: ValueId| {
        let s = &graph.node(v).shape;
        matches!(s.len(), 3 | 4)
            && s[s.len() - 3] == channels
            && s.iter().product::<usize>() == channels
    };
    let (x, scale) = match (
        &graph.node(a).shape == x_shape,
        &graph.node(b).shape == x_shape,
    ) {
        (true, false) if per_channel(b) => (a, b),
        (false, true) if per_channel(a) => (b, a),
        _ => return why("neither operand is one value per channel for every image".into()),
    };
    if let Some(reason) = must_be_written(graph, mul) {
        return why(reason);
    }
    let out_channels = graph.node(conv).shape[1];
    if 3 * out_channels >= batch * h * w {
        return why(format!(
            "scaling the weight ({out_channels} x {channels}, computed per inference, so \
             not packed once) costs more than a third of scaling the input ({channels} x {})",
            batch * h * w
        ));
    }
    Some(Ok((mul, x, scale)))
}

impl Pass for FoldChannelScale {
    fn name(&self) -> &'static str {
        "fold-channel-scale"
    }

    fn description(&self) -> &'static str {
        "move a per-channel scale of a 1x1 convolution's input onto its weight"
    }

    fn explain(&self, graph: &Graph) -> Vec<String> {
        graph
            .topo_order()
            .into_iter()
            .filter_map(|conv| scale_to_fold(graph, conv)?.err())
            .collect()
    }

    fn run(&self, graph: &mut Graph) -> bool {
        // A convolution whose output scale was folded already has a `scaled_weight`.
        let mut names = Names::of(graph);
        let mut changed = false;
        for conv in graph.topo_order() {
            let Some(Ok((mul, x, scale))) = scale_to_fold(graph, conv) else {
                continue;
            };
            let weight = graph.inputs(conv)[1];
            let channels = graph.node(mul).shape[1] as i64;
            let base = graph.node(conv).name.clone();
            // A `[C, 1, 1]` scale is reshaped to broadcast over the weight's input channels.
            let scale4 = if graph.node(scale).shape.len() == 4 {
                scale
            } else {
                let mut shape = Attrs::new();
                shape.insert("shape".into(), Attr::Ints(vec![1, channels, 1, 1]));
                add_op(
                    graph,
                    conv,
                    names.fresh(&format!("{base}.input_scale")),
                    "reshape",
                    shape,
                    &[scale],
                )
            };
            let scaled = add_op(
                graph,
                conv,
                names.fresh(&format!("{base}.scaled_weight")),
                "mul",
                Attrs::new(),
                &[weight, scale4],
            );
            graph.set_input(conv, 0, x);
            graph.set_input(conv, 1, scaled);
            graph.nodes.remove_node(mul);
            changed = true;
        }
        changed
    }
}
