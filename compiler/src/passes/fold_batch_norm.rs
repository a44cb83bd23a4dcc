//! `fold-batch-norm`: `batch_norm2d(conv2d(x, w, b))` at inference is one convolution with
//! `w' = w * s` and `b' = (b - mean) * s + beta`, where `s = gamma / sqrt(var + eps)` per
//! output channel. The scale and shift are built from the parameters as a small subgraph
//! that depends on weights only (computed once when weights are bound), so the pass needs no
//! weight values and the interpreter checks it like any other rewrite. Fires only when the
//! convolution has no other user and is not a graph output.

use super::fusion::{add_op, must_be_written, Names};
use super::Pass;
use crate::ir::{Graph, NodeKind, ValueId};
use crate::ops::{Attr, Attrs, AttrsExt};

pub struct FoldBatchNorm;

/// The convolution `bn` reads: `None` when it reads none, `Err` with the reason when the
/// convolution's own result is needed too (another reader, or a graph output), so folding
/// would change it.
fn conv_to_fold(graph: &Graph, bn: ValueId) -> Option<Result<ValueId, String>> {
    let conv = graph.inputs(bn)[0];
    if graph.node(conv).op().map(|o| o.name) != Some("conv2d") {
        return None;
    }
    Some(match must_be_written(graph, conv) {
        None => Ok(conv),
        Some(why) => Err(format!(
            "fold-batch-norm: `{}` is not folded into `{}`: {why} unnormalised",
            graph.node(bn).name,
            graph.node(conv).name
        )),
    })
}

fn scalar(graph: &mut Graph, like: ValueId, name: String, value: f64) -> ValueId {
    let mut attrs = Attrs::new();
    attrs.insert("shape".into(), Attr::Ints(vec![]));
    attrs.insert("value".into(), Attr::Float(value));
    add_op(graph, like, name, "full", attrs, &[])
}

/// The per-channel scale `gamma / sqrt(var + eps)` of batch norm `bn`, as ops over its
/// parameters named `{base}.bn_*` (computed once when weights are bound).
pub(super) fn bn_scale(
    graph: &mut Graph,
    names: &mut Names,
    bn: ValueId,
    eps: f64,
    base: &str,
) -> ValueId {
    let inputs = graph.inputs(bn);
    let (gamma, var) = (inputs[1], inputs[4]);
    // Fresh names: a second batch norm folded into the same convolution, or a value the
    // spec itself named like these, must not be defined twice.
    let mut n = |suffix: &str| names.fresh(&format!("{base}.bn_{suffix}"));
    let eps_node = scalar(graph, bn, n("eps"), eps);
    let var_eps = add_op(
        graph,
        bn,
        n("var_eps"),
        "add",
        Attrs::new(),
        &[var, eps_node],
    );
    let std = add_op(graph, bn, n("std"), "sqrt", Attrs::new(), &[var_eps]);
    add_op(graph, bn, n("scale"), "div", Attrs::new(), &[gamma, std])
}

/// The per-channel shift `(bias - mean) * scale + beta` of batch norm `bn` (`bias` 0 when
/// absent) for its [`bn_scale`], named like it.
pub(super) fn bn_shift(
    graph: &mut Graph,
    names: &mut Names,
    bn: ValueId,
    base: &str,
    scale: ValueId,
    bias: Option<ValueId>,
) -> ValueId {
    let inputs = graph.inputs(bn);
    let (beta, mean) = (inputs[2], inputs[3]);
    let mut n = |suffix: &str| names.fresh(&format!("{base}.bn_{suffix}"));
    let centred = match bias {
        Some(b) => add_op(graph, bn, n("centred"), "sub", Attrs::new(), &[b, mean]),
        None => add_op(graph, bn, n("centred"), "neg", Attrs::new(), &[mean]),
    };
    let scaled = add_op(
        graph,
        bn,
        n("scaled"),
        "mul",
        Attrs::new(),
        &[centred, scale],
    );
    add_op(graph, bn, n("bias"), "add", Attrs::new(), &[scaled, beta])
}

impl Pass for FoldBatchNorm {
    fn name(&self) -> &'static str {
        "fold-batch-norm"
    }

    fn description(&self) -> &'static str {
        "fold inference BatchNorm into the preceding convolution's weight and bias"
    }

    fn explain(&self, graph: &Graph) -> Vec<String> {
        graph
            .topo_order()
            .into_iter()
            .filter(|&n| graph.node(n).op().map(|o| o.name) == Some("batch_norm2d"))
            .filter_map(|bn| conv_to_fold(graph, bn)?.err())
            .collect()
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut changed = false;
        let mut names = Names::of(graph);
        for bn in graph.topo_order() {
            if graph.node(bn).op().map(|o| o.name) != Some("batch_norm2d") {
                continue;
            }
            let Some(Ok(conv)) = conv_to_fold(graph, bn) else {
                continue;
            };
            let NodeKind::Op {
                attrs: bn_attrs, ..
            } = &graph.node(bn).kind
            else {
                continue;
            };
            let eps = bn_attrs.float("eps");
            let conv_inputs = graph.inputs(conv);
            let (w, b) = (conv_inputs[1], conv_inputs.get(2).copied());
            let out = graph.node(w).shape[0] as i64;
            let base = graph.node(conv).name.clone();
            let scale = bn_scale(graph, &mut names, bn, eps, &base);
            let mut shape = Attrs::new();
            shape.insert("shape".into(), Attr::Ints(vec![out, 1, 1, 1]));
            let scale4 = add_op(
                graph,
                bn,
                names.fresh(&format!("{base}.bn_scale4")),
                "reshape",
                shape,
                &[scale],
            );
            let new_w = add_op(
                graph,
                bn,
                names.fresh(&format!("{base}.bn_weight")),
                "mul",
                Attrs::new(),
                &[w, scale4],
            );
            let new_b = bn_shift(graph, &mut names, bn, &base, scale, b);

            if let NodeKind::Op { attrs, .. } = &mut graph.nodes[conv].kind {
                attrs.insert("bias".into(), Attr::Bool(true));
            }
            graph.set_input(conv, 1, new_w);
            graph.set_input(conv, 2, new_b);
            graph.replace_uses(bn, conv);
            graph.nodes.remove_node(bn);
            changed = true;
        }
        changed
    }
}
