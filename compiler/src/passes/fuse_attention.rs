//! `fuse-attention`: scaled dot-product attention, `matmul(softmax(matmul(q, k_t) * scale,
//! axis=-1), v)`, becomes one fusion group of kind `attention`, so a kernel can compute the
//! scores of a block of queries, scale them, normalise them and multiply them with `v`
//! without writing the attention matrix (the flash-attention schedule).
//!
//! The scale is optional and may be written `* s`, `s *` or `/ s`, where `s` is a scalar
//! prepared once (a constant, or an op over parameters alone). Layout changes around the
//! products join the group as well: a `permute` that only feeds `q`, `k_t` or `v` is a
//! strided read (the transpose of `k` in particular), and the chain of layout changes and
//! elementwise ops that only the result feeds (the usual `b h n d -> b n h d`) is applied as
//! the kernel stores, as in `fuse-epilogue`.

use super::fusion::{
    chain_after, is_layout_change, make_group_named, must_be_written, reads_input,
};
use super::Pass;
use crate::ir::{Graph, NodeKind, ValueId};
use crate::ops::AttrsExt;
use std::collections::HashMap;

pub struct FuseAttention;

fn op_name(graph: &Graph, id: ValueId) -> Option<&'static str> {
    graph.node(id).op().map(|op| op.name)
}

/// The nodes of an attention around `softmax`, the `q.k^T` product first and the rest in no
/// particular order: `None` when the graph has no `matmul -> [scale] -> softmax -> matmul`
/// there at all, `Err` with the reason when it has one that cannot be fused.
fn match_at(graph: &Graph, softmax: ValueId) -> Option<Result<Vec<ValueId>, String>> {
    let NodeKind::Op { op, attrs } = &graph.node(softmax).kind else {
        return None;
    };
    if op.name != "softmax" {
        return None;
    }
    let output = graph
        .users(softmax)
        .into_iter()
        .find(|&u| op_name(graph, u) == Some("matmul") && graph.inputs(u)[0] == softmax)?;
    let logits = graph.inputs(softmax)[0];
    let operands = graph.inputs(logits);
    let is_matmul = |v: ValueId| op_name(graph, v) == Some("matmul");
    // (q.k^T, the scalar scale and the op applying it)
    let (scores, scale) = match op_name(graph, logits)? {
        "matmul" => (logits, None),
        "mul" => {
            let at = operands.iter().position(|&v| is_matmul(v))?;
            (operands[at], Some(operands[1 - at]))
        }
        "div" if is_matmul(operands[0]) => (operands[0], Some(operands[1])),
        _ => return None,
    };
    if let Err(why) = check(graph, softmax, attrs.int("axis"), scores, logits, scale) {
        return Some(Err(why));
    }
    let mut members = vec![scores, softmax, output];
    if logits != scores {
        members.push(logits);
    }
    let reads = [
        (graph.inputs(scores)[0], scores),
        (graph.inputs(scores)[1], scores),
        (graph.inputs(output)[1], output),
    ];
    for (operand, product) in reads {
        if is_layout_change(graph.node(operand))
            && must_be_written(graph, operand).is_none()
            && graph.users(operand) == [product]
        {
            members.push(operand);
        }
    }
    members.extend(chain_after(graph, output).0);
    Some(Ok(members))
}

/// Why the attention with these parts cannot be one kernel, if it cannot.
fn check(
    graph: &Graph,
    softmax: ValueId,
    axis: i64,
    scores: ValueId,
    logits: ValueId,
    scale: Option<ValueId>,
) -> Result<(), String> {
    let name = |v: ValueId| graph.node(v).name.as_str();
    let rank = graph.node(softmax).shape.len() as i64;
    if axis != -1 && axis != rank - 1 {
        return Err(format!(
            "`{}` normalises over axis {axis}, not the last (key) axis",
            name(softmax)
        ));
    }
    if let Some(s) = scale {
        let node = graph.node(s);
        if node.numel() != 1 {
            return Err(format!(
                "the scale `{}` is not a scalar (shape {:?})",
                name(s),
                node.shape
            ));
        }
        if reads_input(graph, s) {
            return Err(format!(
                "the scale `{}` is computed from the input, not prepared once",
                name(s)
            ));
        }
        if graph.node(logits).shape != graph.node(scores).shape {
            return Err(format!(
                "the scale `{}` broadcasts the scores `{}` from {:?} to {:?}",
                name(s),
                name(scores),
                graph.node(scores).shape,
                graph.node(logits).shape
            ));
        }
    }
    // Every intermediate stays inside the kernel, so none may be needed elsewhere.
    let mut inner = vec![scores, softmax];
    if logits != scores {
        inner.insert(1, logits);
    }
    for v in inner {
        if let Some(why) = must_be_written(graph, v) {
            return Err(format!("the attention matrix must be materialised: {why}"));
        }
    }
    Ok(())
}

/// The attention around `softmax` if it can be fused: its members in topological order
/// (`position`: each value's place in one), and the `q.k^T` product the group is named after.
fn fusable_at(
    graph: &Graph,
    softmax: ValueId,
    position: &HashMap<ValueId, usize>,
) -> Option<(Vec<ValueId>, ValueId)> {
    let mut members = match_at(graph, softmax)?.ok()?;
    let scores = members[0];
    members.sort_by_key(|m| position[m]);
    Some((members, scores))
}

/// Whether the layout change `permute` is read by an attention this pass fuses, which loads
/// its operand through the change instead of materialising it.
pub(super) fn reads_through(graph: &Graph, permute: ValueId) -> bool {
    let Some(&product) = graph.users(permute).first() else {
        return false;
    };
    // The softmax is the product's left operand (the `.v` product), or downstream of it
    // through at most the scale (the `q.k^T` product).
    let mut candidates = vec![graph.inputs(product)[0]];
    let mut next = product;
    for _ in 0..2 {
        match graph.users(next)[..] {
            [only] => {
                candidates.push(only);
                next = only;
            }
            _ => break,
        }
    }
    candidates
        .into_iter()
        .any(|s| matches!(match_at(graph, s), Some(Ok(members)) if members.contains(&permute)))
}

impl Pass for FuseAttention {
    fn name(&self) -> &'static str {
        "fuse-attention"
    }

    fn description(&self) -> &'static str {
        "fuse softmax(q.k^T * scale).v (with the layout changes around it) into one kernel"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut changed = false;
        // One at a time: a group may take a layout change another attention would have read.
        let order = graph.topo_order();
        let mut position: HashMap<ValueId, usize> =
            order.iter().enumerate().map(|(i, &v)| (v, i)).collect();
        for softmax in order {
            if !graph.nodes.contains_node(softmax) {
                continue;
            }
            if let Some((members, scores)) = fusable_at(graph, softmax, &position) {
                let group = make_group_named(graph, &members, "attention", scores);
                // The group sits where its last member did (its inputs come before, its
                // readers after), so one order serves the whole pass; the group may reuse
                // a removed node's index, whose stale place this overwrites.
                let at = position[members.last().expect("a group has members")];
                for m in &members {
                    position.remove(m);
                }
                position.insert(group, at);
                changed = true;
            }
        }
        changed
    }

    fn explain(&self, graph: &Graph) -> Vec<String> {
        graph
            .topo_order()
            .into_iter()
            .filter_map(|s| {
                let why = match_at(graph, s)?.err()?;
                Some(format!(
                    "fuse-attention: `{}` is not fused into an attention kernel: {why}",
                    graph.node(s).name
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::parse_text;

    /// An attention over `scores` of shape [1, 2, 4, 4], with `extra` lines spliced in.
    fn attention(softmax_axis: i64, scale: &str, extra: &str) -> Graph {
        parse_text(&format!(
            "graph t {{
  input %q: f32[1, 2, 4, 3]
  input %k_t: f32[1, 2, 3, 4]
  input %v: f32[1, 2, 4, 3]
  {scale}
  %scores = matmul(%q, %k_t): f32[1, 2, 4, 4]
  %logits = mul(%scores, %s): f32[1, 2, 4, 4]
  %attn = softmax(%logits) {{axis={softmax_axis}}}: f32[1, 2, 4, 4]
  %o = matmul(%attn, %v): f32[1, 2, 4, 3]
  output %y = %o
  {extra}
}}"
        ))
        .expect("valid IR")
    }

    const SCALAR: &str = "%s = full() {shape=[], value=0.5}: f32[]";

    #[test]
    fn fuses_and_explains_nothing_when_everything_fits() {
        let mut g = attention(-1, SCALAR, "");
        assert!(FuseAttention.explain(&g).is_empty());
        assert!(FuseAttention.run(&mut g));
        let o = g.outputs[0].value;
        assert!(matches!(&g.node(o).kind, NodeKind::Fused { kind, .. } if kind == "attention"));
        assert_eq!(g.node(o).name, "scores");
    }

    #[test]
    fn explains_each_near_miss() {
        let cases = [
            (
                attention(-1, SCALAR, "output %w = %attn"),
                "`attn` is a graph output",
            ),
            (
                attention(2, SCALAR, ""),
                "normalises over axis 2, not the last",
            ),
            (
                attention(-1, "param %s: f32[4] = uniform(1.0)", ""),
                "the scale `s` is not a scalar (shape [4])",
            ),
            (
                attention(-1, "input %s: f32[]", ""),
                "the scale `s` is computed from the input",
            ),
        ];
        for (mut g, why) in cases {
            let said = FuseAttention.explain(&g);
            assert_eq!(said.len(), 1, "{said:?}");
            assert!(
                said[0].contains("`attn` is not fused") && said[0].contains(why),
                "{said:?}"
            );
            assert!(!FuseAttention.run(&mut g));
        }
    }
}
