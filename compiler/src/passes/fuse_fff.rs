//! `fuse-fff`: multi-level feature fusion (FPN, BiFPN, pyramid pooling, and the concats of
//! Res2Net, RDN and DenseNet) as one kernel per fused level, so neither a concatenation nor a
//! resized map is written out.
//!
//! Two rewrites, both anchored at a `conv2d` computed per inference:
//!
//! 1. *Convolution over a channel concat.* `conv2d(concat(x_0, ..., x_n), w, b)` is
//!    `sum_i conv2d(x_i, w[:, o_i..o_i + c_i]) + b` (input `i` holds channels
//!    `o_i..o_i + c_i`). The weight slices (and any scalar `x_i * s` folded into them) are
//!    ops over the parameters alone, prepared once; the per-input convolutions and their sum
//!    form the group. An input the kernel can read through (`upsample`, `expand`, `reshape`,
//!    `slice`) is pulled into the group when only this concat uses it, so the resize happens
//!    while reading. Inputs computed from weights alone (a coordinate grid) contribute a
//!    constant map convolved once, outside the group. Per-channel ops between the concat and
//!    the conv (DenseNet's BatchNorm and ReLU) are applied to each input with their
//!    parameters sliced by channel, and nested concats are read as their leaves, so a dense
//!    block's growing feature list is never written. Only small products are fused this
//!    way ([`MAX_DIRECT_MACS`]): the group computes its convolutions directly, far slower
//!    per multiply-add than the convolution kernels a written concat feeds.
//! 2. *FPN/BiFPN top-down sum.* `conv(f) [* w0 / d] + upsample(last) [* w1 / d]`: the
//!    scalars after the convolution fold into its weight and bias, those of the resized
//!    summand into one factor (both prepared from the weights), and the resize joins the
//!    group, which reads `last` through it as an epilogue operand.
//!
//! The group then takes the elementwise chain only it feeds (activation, residual), as
//! `fuse-epilogue` would have, so it composes with that pass instead of competing with it.
//! `explain` reports each concat or resize left written, and why.

use super::fusion::{
    add_op, chain_after, input_dependent, is_elementwise, make_group, must_be_written, Names,
};
use super::Pass;
use crate::ir::{Graph, Node, NodeKind, ValueId};
use crate::ops::{Attr, Attrs, AttrsExt};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::HashSet;

pub struct FuseFff;

/// Ops that only choose (or interpolate between) the input elements a result element reads,
/// so a kernel can apply them while loading its operand.
const READ_OPS: &[&str] = &["upsample", "expand", "reshape", "slice"];

fn op_name(graph: &Graph, id: ValueId) -> Option<&'static str> {
    graph.node(id).op().map(|op| op.name)
}

fn name(graph: &Graph, id: ValueId) -> &str {
    &graph.node(id).name
}

/// `data * factor`, `factor * data` or `data / factor`, where `factor` broadcasts without
/// changing `data`'s shape.
#[derive(Clone, Copy)]
struct Scale {
    node: ValueId,
    data: ValueId,
    factor: ValueId,
    divides: bool,
}

impl Scale {
    fn scalar(&self, graph: &Graph) -> bool {
        graph.node(self.factor).numel() == 1
    }

    /// Why this scale cannot be folded into a weight, if it cannot.
    fn unfoldable(&self, graph: &Graph, dependent: &HashSet<ValueId>) -> Option<String> {
        let (node, factor) = (name(graph, self.node), name(graph, self.factor));
        if dependent.contains(&self.factor) {
            Some(format!(
                "`{node}` scales by `{factor}`, which is computed per inference, so it cannot be folded into a weight"
            ))
        } else if !self.scalar(graph) {
            Some(format!(
                "`{node}` scales by `{factor}` of shape {:?}, not a single scalar, so it is not folded into a weight",
                graph.node(self.factor).shape
            ))
        } else {
            None
        }
    }
}

/// `id` as a scale of `data` (of either operand when `None`, preferring a one-element
/// factor).
fn as_scale(graph: &Graph, id: ValueId, data: Option<ValueId>) -> Option<Scale> {
    let op = op_name(graph, id)?;
    let ins = graph.inputs(id);
    let [a, b] = ins[..] else { return None };
    let pairs = match op {
        "mul" => vec![(a, b), (b, a)],
        "div" => vec![(a, b)],
        _ => return None,
    };
    let (data, factor) = pairs
        .into_iter()
        .filter(|&(d, _)| {
            graph.node(d).shape == graph.node(id).shape && data.is_none_or(|x| x == d)
        })
        .min_by_key(|&(_, f)| graph.node(f).numel() != 1)?;
    Some(Scale {
        node: id,
        data,
        factor,
        divides: op == "div",
    })
}

/// One summand as the group sees it: the value it reads (`source`), the read-through ops and
/// scalar scales between that value and the summand, and why peeling stopped early.
struct Term {
    source: ValueId,
    /// Read-through ops, from `source` outwards.
    reads: Vec<ValueId>,
    /// Scales by a parameter-only scalar, from `source` outwards.
    scales: Vec<Scale>,
    /// Set when the op at `source` could have been absorbed but was not.
    stopped: Option<String>,
}

impl Term {
    /// A summand read as it is.
    fn whole(value: ValueId) -> Term {
        Term {
            source: value,
            reads: Vec::new(),
            scales: Vec::new(),
            stopped: None,
        }
    }

    fn resizes(&self, graph: &Graph) -> bool {
        self.reads
            .iter()
            .any(|&r| op_name(graph, r) == Some("upsample"))
    }
}

/// Walks from `value` towards its producers while each op is a read-through op or (with
/// `fold_scales`) a scale by a parameter-only scalar, whose result only the next op (or the
/// group) reads.
fn peel(graph: &Graph, dependent: &HashSet<ValueId>, value: ValueId, fold_scales: bool) -> Term {
    let mut term = Term::whole(value);
    let mut v = value;
    loop {
        let read = op_name(graph, v).is_some_and(|op| READ_OPS.contains(&op));
        let scale = as_scale(graph, v, None).filter(|_| fold_scales);
        // A product of two per-inference maps (an attention mask) is no near miss.
        let foldable_kind =
            scale.is_some_and(|s| s.scalar(graph) || !dependent.contains(&s.factor));
        if !read && !foldable_kind {
            break;
        }
        if let Some(why) = must_be_written(graph, v) {
            term.stopped = Some(why);
            break;
        }
        match scale {
            Some(s) => {
                if let Some(why) = s.unfoldable(graph, dependent) {
                    term.stopped = Some(why);
                    break;
                }
                term.scales.push(s);
                v = s.data;
            }
            None => {
                term.reads.push(v);
                v = graph.inputs(v)[0];
            }
        }
    }
    // Collected walking inwards; the group applies them outwards.
    term.source = v;
    term.reads.reverse();
    term.scales.reverse();
    term
}

/// A `conv2d` over a channel concat that rewrite 1 applies to.
struct ConcatConv {
    conv: ValueId,
    attrs: Attrs,
    concat: ValueId,
    /// Per-channel ops between the concat and the conv, innermost first.
    channelwise: Vec<Channelwise>,
    terms: Vec<Term>,
}

/// An op that computes each channel from the same channel alone: `batch_norm2d` (whose
/// parameters then split by channel) or a unary elementwise op.
struct Channelwise {
    node: ValueId,
    op: &'static str,
    attrs: Attrs,
}

fn as_channelwise(graph: &Graph, id: ValueId) -> Option<Channelwise> {
    let NodeKind::Op { op, attrs } = &graph.node(id).kind else {
        return None;
    };
    let unary = graph.inputs(id).len() == 1 && is_elementwise(graph.node(id));
    (unary || op.name == "batch_norm2d").then(|| Channelwise {
        node: id,
        op: op.name,
        attrs: attrs.clone(),
    })
}

/// The per-channel ops `value` is computed by (outermost first) and the value before them.
fn behind_channelwise(graph: &Graph, value: ValueId) -> (Vec<Channelwise>, ValueId) {
    let mut chain = Vec::new();
    let mut v = value;
    while let Some(c) = as_channelwise(graph, v) {
        chain.push(c);
        v = graph.inputs(v)[0];
    }
    (chain, v)
}

fn op_attrs(graph: &Graph, id: ValueId, op: &str) -> Option<Attrs> {
    match &graph.node(id).kind {
        NodeKind::Op { op: def, attrs } if def.name == op => Some(attrs.clone()),
        _ => None,
    }
}

/// The axis `id` concatenates along, counted from the front, if it is a `concat`.
fn concat_axis(graph: &Graph, id: ValueId) -> Option<i64> {
    let axis = op_attrs(graph, id, "concat")?.int("axis");
    let rank = graph.node(id).shape.len() as i64;
    Some(axis.rem_euclid(rank.max(1)))
}

/// `concat(concat(a, b), c)` along one axis is `concat(a, b, c)`. A concat only a `conv2d`
/// reads is made to read the leaves, so the running feature list of a DenseNet/RDN-style
/// block (each concat extending the previous one) need not be written for it; an inner
/// concat left without users is removed. Consumers go first, so once the last concat of a
/// chain no longer reads the one before, that one may be flattened for its own conv too.
fn flatten_concats(graph: &mut Graph) -> bool {
    let mut changed = false;
    for conv in graph.topo_order().into_iter().rev() {
        if !graph.nodes.contains_node(conv) || op_name(graph, conv) != Some("conv2d") {
            continue;
        }
        let (_, cat) = behind_channelwise(graph, graph.inputs(conv)[0]);
        let Some(axis) = concat_axis(graph, cat) else {
            continue;
        };
        if must_be_written(graph, cat).is_some() {
            continue;
        }
        let (mut leaves, mut inner) = (Vec::new(), Vec::new());
        let mut stack: Vec<ValueId> = graph.inputs(cat).into_iter().rev().collect();
        while let Some(v) = stack.pop() {
            if concat_axis(graph, v) == Some(axis) {
                inner.push(v);
                stack.extend(graph.inputs(v).into_iter().rev());
            } else {
                leaves.push(v);
            }
        }
        if inner.is_empty() {
            continue;
        }
        let edges: Vec<_> = graph
            .nodes
            .edges_directed(cat, Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for e in edges {
            graph.nodes.remove_edge(e);
        }
        for (pos, &leaf) in leaves.iter().enumerate() {
            graph.nodes.add_edge(leaf, cat, pos);
        }
        // Outer ones first: removing one may leave the concats it read without users.
        for v in inner {
            let is_output = graph.outputs.iter().any(|o| o.value == v);
            if graph.nodes.contains_node(v) && graph.users(v).is_empty() && !is_output {
                graph.nodes.remove_node(v);
            }
        }
        changed = true;
    }
    changed
}

/// Most multiply-adds a convolution over a concat may have for rewrite 1 to compute it in
/// the fused loop. The group's loop computes the product directly, at a tenth or less of
/// the convolution kernels' rate on the CPU, so the concat it saves writing pays only for
/// small products, where the kernels' per-call costs dominate. Measured at -O2, 2 threads,
/// fused against not: DenseNet-121 345 against 51 ms, Res2Net-50 (26w x 4s) 168 against 57,
/// RDN x2 9.5 s against 0.42, the spatial broadcast decoder 5.8 against 4.2 ms; the BiFPN
/// test model (products of a few thousand multiply-adds) 0.042 against 0.053 ms.
const MAX_DIRECT_MACS: u64 = 1 << 16;

/// The multiply-adds of convolution `conv`: each output element reduces over its weight's
/// `C_in / groups x kh x kw`.
fn direct_macs(graph: &Graph, conv: ValueId) -> u64 {
    let per_output: usize = graph
        .inputs(conv)
        .get(1)
        .map_or(0, |&w| graph.node(w).shape.iter().skip(1).product());
    (graph.node(conv).numel() as u64).saturating_mul(per_output as u64)
}

/// `None` when `conv` is not a `conv2d` reading a concat; otherwise the match, or why it does
/// not apply.
fn concat_conv(
    graph: &Graph,
    dependent: &HashSet<ValueId>,
    conv: ValueId,
) -> Option<Result<ConcatConv, String>> {
    let attrs = op_attrs(graph, conv, "conv2d")?;
    let ins = graph.inputs(conv);
    let (mut channelwise, concat) = behind_channelwise(graph, *ins.first()?);
    let axis = concat_axis(graph, concat)?;
    let channel_params = || {
        channelwise
            .iter()
            .flat_map(|c| graph.inputs(c.node).into_iter().skip(1))
            .find(|p| dependent.contains(p))
    };
    let groups = attrs.int("groups");
    let rank = graph.node(concat).shape.len() as i64;
    let xs = graph.inputs(concat);
    let macs = direct_macs(graph, conv);
    let why = if groups != 1 {
        format!(
            "it is a grouped convolution (groups={groups}), so its weight does not split by input"
        )
    } else if macs > MAX_DIRECT_MACS {
        format!(
            "its product ({macs} multiply-adds) is too large to compute directly in a fused loop (at most {MAX_DIRECT_MACS}); the convolution kernels outrun that by more than writing the concat costs"
        )
    } else if axis != rank - 3 {
        format!(
            "`{}` joins axis {axis}, not the channel axis",
            name(graph, concat)
        )
    } else if let Some(&empty) = xs.iter().find(|&&x| graph.node(x).numel() == 0) {
        format!(
            "its part `{}` is empty, and a convolution over no channels is not an op",
            name(graph, empty)
        )
    } else if let Some(why) = channelwise
        .iter()
        .map(|c| c.node)
        .chain([concat])
        .find_map(|n| must_be_written(graph, n))
    {
        why
    } else if let Some(p) = channel_params() {
        format!(
            "`{}` is computed per inference, so it cannot be split by input channel",
            name(graph, p)
        )
    } else if let Some(&w) = ins[1..].iter().find(|w| dependent.contains(w)) {
        format!(
            "its operand `{}` is computed per inference, so the per-input weight slices cannot be prepared once",
            name(graph, w)
        )
    } else if !xs.iter().any(|x| dependent.contains(x)) {
        format!("`{}` is computed from weights alone", name(graph, concat))
    } else {
        // A scale cannot move past the per-channel ops into the weight.
        let fold_scales = channelwise.is_empty();
        let terms = xs
            .into_iter()
            .map(|x| {
                if dependent.contains(&x) {
                    peel(graph, dependent, x, fold_scales)
                } else {
                    // Computed from weights alone: convolved once, outside the group.
                    Term::whole(x)
                }
            })
            .collect();
        channelwise.reverse();
        return Some(Ok(ConcatConv {
            conv,
            attrs,
            concat,
            channelwise,
            terms,
        }));
    };
    Some(Err(why))
}

/// The FPN/BiFPN top-down sum after a convolution that rewrite 2 applies to.
struct TopDown {
    /// Scales between the convolution and the sum, folded into its weight and bias.
    scales: Vec<Scale>,
    add: ValueId,
    /// The resized summand: its reads join the group, its scales become one factor.
    other: Term,
}

/// Follows `result` (a convolution's value) through scalar scales to a sum with a resized
/// map; `Err` says what is in the way.
fn top_down(
    graph: &Graph,
    dependent: &HashSet<ValueId>,
    convs: &[ValueId],
    result: ValueId,
) -> Result<TopDown, String> {
    let mut scales = Vec::new();
    let mut v = result;
    let add = loop {
        if let Some(why) = must_be_written(graph, v) {
            return Err(why);
        }
        let u = graph.users(v)[0];
        if op_name(graph, u) == Some("add") {
            break u;
        }
        let Some(scale) = as_scale(graph, u, Some(v)) else {
            return Err(format!(
                "`{}` feeds `{}`, which is neither a scale nor a sum",
                name(graph, v),
                name(graph, u)
            ));
        };
        if let Some(why) = scale.unfoldable(graph, dependent) {
            return Err(why);
        }
        let computed = convs
            .iter()
            .flat_map(|&c| graph.inputs(c).into_iter().skip(1))
            .find(|p| dependent.contains(p));
        if let Some(p) = computed {
            return Err(format!(
                "`{}` is computed per inference, so `{}` cannot be folded into it",
                name(graph, p),
                name(graph, u)
            ));
        }
        scales.push(scale);
        v = u;
    };
    let ins = graph.inputs(add);
    let other = if ins[0] == v { ins[1] } else { ins[0] };
    if graph.node(add).shape != graph.node(other).shape
        || graph.node(add).shape != graph.node(v).shape
    {
        return Err(format!("`{}` broadcasts its operands", name(graph, add)));
    }
    if !dependent.contains(&other) {
        return Err(format!(
            "the other summand `{}` is computed from weights alone",
            name(graph, other)
        ));
    }
    let term = peel(graph, dependent, other, true);
    if !term.resizes(graph) {
        return Err(term.stopped.unwrap_or_else(|| {
            format!(
                "the other summand `{}` is not read through a resize",
                name(graph, other)
            )
        }));
    }
    Ok(TopDown {
        scales,
        add,
        other: term,
    })
}

/// The convolutions computing one original `conv2d`, after rewrite 1 or as it was.
struct Contraction {
    /// Every convolution whose weight and bias a later scale folds into (including those over
    /// weight-only inputs, which stay outside the group).
    convs: Vec<ValueId>,
    /// The nodes the group takes, in topological order.
    members: Vec<ValueId>,
    /// The value equal to the original convolution's.
    result: ValueId,
}

fn attr_map<const N: usize>(items: [(&str, Attr); N]) -> Attrs {
    items.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The graph under rewrite, with the per-inference set and the taken names kept current as
/// values are added and removed (removed nodes' indices are reused by new ones).
struct Rewriter<'g> {
    graph: &'g mut Graph,
    dependent: HashSet<ValueId>,
    names: Names,
}

impl Rewriter<'_> {
    /// Adds op `op` over `inputs`, located at `like` and named after it with `suffix`.
    fn add(
        &mut self,
        like: ValueId,
        suffix: &str,
        op: &str,
        attrs: Attrs,
        inputs: &[ValueId],
    ) -> ValueId {
        let name = self
            .names
            .fresh(&format!("{}.{suffix}", name(self.graph, like)));
        let id = add_op(self.graph, like, name, op, attrs, inputs);
        if inputs.iter().any(|i| self.dependent.contains(i)) {
            self.dependent.insert(id);
        }
        id
    }

    fn remove(&mut self, id: ValueId) {
        self.graph.nodes.remove_node(id);
        self.dependent.remove(&id);
    }

    /// Replaces `members` by one `fff` group that takes `anchor`'s name and location.
    fn group(&mut self, members: &[ValueId], anchor: Node) {
        for m in members {
            self.dependent.remove(m);
        }
        let group = make_group(self.graph, members, "fff");
        let node = &mut self.graph.nodes[group];
        (node.name, node.loc, node.chain) = (anchor.name, anchor.loc, anchor.chain);
        self.dependent.insert(group);
    }

    /// The product of `scales`' factors (divisors divide) as one rank-0 value over the
    /// weights.
    fn combined_factor(&mut self, like: ValueId, scales: &[Scale]) -> ValueId {
        let rank0 = |rw: &mut Self, f: ValueId| {
            if rw.graph.node(f).shape.is_empty() {
                f
            } else {
                let shape = attr_map([("shape", Attr::Ints(vec![]))]);
                rw.add(like, "scale", "reshape", shape, &[f])
            }
        };
        let (muls, divs): (Vec<&Scale>, Vec<&Scale>) = scales.iter().partition(|s| !s.divides);
        let mut acc = match muls.first() {
            Some(s) => rank0(self, s.factor),
            None => {
                let one = attr_map([("shape", Attr::Ints(vec![])), ("value", Attr::Float(1.0))]);
                self.add(like, "one", "full", one, &[])
            }
        };
        for s in muls.iter().skip(1).chain(&divs) {
            let f = rank0(self, s.factor);
            let op = if s.divides { "div" } else { "mul" };
            acc = self.add(like, "scale", op, Attrs::new(), &[acc, f]);
        }
        acc
    }

    /// Removes scale nodes (given innermost first), making their users read the unscaled
    /// value.
    fn bypass(&mut self, scales: &[Scale]) {
        // Outermost first, so each node's recorded operand is still in the graph.
        for s in scales.iter().rev() {
            self.graph.replace_uses(s.node, s.data);
            self.remove(s.node);
        }
    }

    /// Adds `parts` (at least one) up next to `like`; returns the total and the `add` nodes
    /// made.
    fn sum(&mut self, like: ValueId, parts: &[ValueId]) -> (ValueId, Vec<ValueId>) {
        let mut adds = Vec::new();
        let total = parts[1..].iter().fold(parts[0], |acc, &p| {
            let s = self.add(like, "sum", "add", Attrs::new(), &[acc, p]);
            adds.push(s);
            s
        });
        (total, adds)
    }

    /// Rewrite 1: replaces the convolution over the concat by per-input convolutions and
    /// their sum; the concat and the original convolution are removed.
    fn split_concat(&mut self, m: ConcatConv) -> Contraction {
        let conv = m.conv;
        let conv_ins = self.graph.inputs(conv);
        let (weight, bias) = (conv_ins[1], conv_ins.get(2).copied());
        let factors: Vec<Option<ValueId>> = m
            .terms
            .iter()
            .map(|t| (!t.scales.is_empty()).then(|| self.combined_factor(conv, &t.scales)))
            .collect();
        for t in &m.terms {
            self.bypass(&t.scales);
        }
        let xs = self.graph.inputs(m.concat);
        let channel_axis = self.graph.node(m.concat).shape.len() - 3;
        // The bias is added once: by the weight-only part when there is one, so it is
        // prepared with it, else by the first per-inference convolution.
        let bias_outside = xs.iter().any(|x| !self.dependent.contains(x));
        let mut bias_left = bias;
        let (mut inside, mut outside, mut reads) = (Vec::new(), Vec::new(), Vec::new());
        let mut offset = 0i64;
        for (i, &x) in xs.iter().enumerate() {
            let channels = self.graph.node(x).shape[channel_axis] as i64;
            let range = attr_map([
                ("axis", Attr::Int(1)),
                ("start", Attr::Int(offset)),
                ("end", Attr::Int(offset + channels)),
                ("step", Attr::Int(1)),
            ]);
            offset += channels;
            let suffix = format!("weight{i}");
            let mut w = self.add(conv, &suffix, "slice", range, &[weight]);
            if let Some(f) = factors[i] {
                w = self.add(
                    conv,
                    &format!("{suffix}_scaled"),
                    "mul",
                    Attrs::new(),
                    &[w, f],
                );
            }
            let per_inference = self.dependent.contains(&x);
            let mut read = x;
            let mut applied = Vec::new();
            for op in &m.channelwise {
                read = self.per_channel_part(op, read, i, offset - channels..offset);
                applied.push(read);
            }
            let mut operands = vec![read, w];
            if per_inference != bias_outside {
                operands.extend(bias_left.take());
            }
            let mut part_attrs = m.attrs.clone();
            part_attrs.insert("bias".into(), Attr::Bool(operands.len() == 3));
            let part = self.add(conv, &format!("part{i}"), "conv2d", part_attrs, &operands);
            if per_inference {
                inside.push(part);
                reads.extend(m.terms[i].reads.iter().copied().chain(applied));
            } else {
                outside.push(part);
            }
        }
        let (mut result, adds) = self.sum(conv, &inside);
        let mut members: Vec<ValueId> = reads
            .into_iter()
            .chain(inside.iter().copied())
            .chain(adds)
            .collect();
        if !outside.is_empty() {
            let (constant, _) = self.sum(conv, &outside);
            result = self.add(conv, "sum", "add", Attrs::new(), &[result, constant]);
            members.push(result);
        }
        self.graph.replace_uses(conv, result);
        self.remove(conv);
        for op in m.channelwise.iter().rev() {
            self.remove(op.node);
        }
        self.remove(m.concat);
        Contraction {
            convs: inside.into_iter().chain(outside).collect(),
            members,
            result,
        }
    }

    /// Per-channel op `op` applied to concat input `i` alone, `x`, which holds channels
    /// `channels` of the concat: the same op over the slices of its per-channel parameters.
    fn per_channel_part(
        &mut self,
        op: &Channelwise,
        x: ValueId,
        i: usize,
        channels: std::ops::Range<i64>,
    ) -> ValueId {
        let mut operands = vec![x];
        for (k, p) in self.graph.inputs(op.node).into_iter().enumerate().skip(1) {
            let range = attr_map([
                ("axis", Attr::Int(0)),
                ("start", Attr::Int(channels.start)),
                ("end", Attr::Int(channels.end)),
                ("step", Attr::Int(1)),
            ]);
            operands.push(self.add(op.node, &format!("param{k}_{i}"), "slice", range, &[p]));
        }
        self.add(
            op.node,
            &format!("part{i}"),
            op.op,
            op.attrs.clone(),
            &operands,
        )
    }

    /// Rewrite 2's weight side: folds the scales after the sum into every convolution's
    /// weight and bias, and removes them.
    fn fold_output_scales(&mut self, anchor: ValueId, c: &Contraction, scales: &[Scale]) {
        if scales.is_empty() {
            return;
        }
        let k = self.combined_factor(anchor, scales);
        self.bypass(scales);
        for &conv in &c.convs {
            let ins = self.graph.inputs(conv);
            for (pos, suffix) in [(1, "weight_scaled"), (2, "bias_scaled")] {
                if let Some(&p) = ins.get(pos) {
                    let scaled = self.add(conv, suffix, "mul", Attrs::new(), &[p, k]);
                    self.graph.set_input(conv, pos, scaled);
                }
            }
        }
    }

    /// Rewrite 2's resized side: its scalar scales become one factor prepared from the
    /// weights and one multiplication in the group. Returns the nodes the group takes for it.
    fn fold_summand_scales(&mut self, add: ValueId, term: &Term) -> Vec<ValueId> {
        let mut nodes = term.reads.clone();
        if term.scales.is_empty() {
            return nodes;
        }
        let k = self.combined_factor(add, &term.scales);
        self.bypass(&term.scales);
        let read = *term.reads.last().unwrap_or(&term.source);
        let pos = self
            .graph
            .inputs(add)
            .iter()
            .position(|&i| i == read)
            .expect("the bypassed summand feeds the sum");
        let scaled = self.add(add, "scaled", "mul", Attrs::new(), &[read, k]);
        self.graph.set_input(add, pos, scaled);
        nodes.push(scaled);
        nodes
    }

    /// Both rewrites at one `conv2d`, each where it applies; returns whether either did.
    fn fuse_at(&mut self, conv: ValueId) -> bool {
        let anchor = self.graph.node(conv).clone();
        let contraction = match concat_conv(self.graph, &self.dependent, conv) {
            Some(Ok(m)) => self.split_concat(m),
            _ => Contraction {
                convs: vec![conv],
                members: vec![conv],
                result: conv,
            },
        };
        let split = contraction.result != conv;
        let found = top_down(
            self.graph,
            &self.dependent,
            &contraction.convs,
            contraction.result,
        );
        let (mut members, tail) = match found {
            Ok(t) => {
                // `conv` itself is gone when the concat was split: name the factor after
                // the value that replaced it.
                self.fold_output_scales(contraction.result, &contraction, &t.scales);
                let resized = self.fold_summand_scales(t.add, &t.other);
                let members: Vec<ValueId> = resized
                    .into_iter()
                    .chain(contraction.members)
                    .chain([t.add])
                    .collect();
                (members, t.add)
            }
            Err(_) if split => (contraction.members, contraction.result),
            Err(_) => return false,
        };
        members.extend(chain_after(self.graph, tail).0);
        self.group(&members, anchor);
        true
    }
}

/// The convolution when `add` sums one (through scalar scales) with a resized map: the
/// shape rewrite 2 looks for, ignoring what may stop it.
fn looks_like_top_down(graph: &Graph, add: ValueId) -> Option<ValueId> {
    if op_name(graph, add) != Some("add") {
        return None;
    }
    let reaches_conv = |mut v: ValueId| loop {
        match op_name(graph, v) {
            Some("conv2d") => return Some(v),
            _ => v = as_scale(graph, v, None)?.data,
        }
    };
    let resized = |mut v: ValueId| loop {
        match op_name(graph, v) {
            Some("upsample") => return true,
            Some(op) if READ_OPS.contains(&op) => v = graph.inputs(v)[0],
            _ => match as_scale(graph, v, None) {
                Some(s) => v = s.data,
                None => return false,
            },
        }
    };
    let ins = graph.inputs(add);
    let [a, b] = ins[..] else { return None };
    reaches_conv(a)
        .filter(|_| resized(b))
        .or_else(|| reaches_conv(b).filter(|_| resized(a)))
}

impl Pass for FuseFff {
    fn name(&self) -> &'static str {
        "fuse-fff"
    }

    fn description(&self) -> &'static str {
        "fuse a conv over a concat of (resized) maps, or an FPN/BiFPN top-down sum, into one kernel"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut changed = flatten_concats(graph);
        let order = graph.topo_order();
        let mut rw = Rewriter {
            dependent: input_dependent(graph),
            names: Names::of(graph),
            graph,
        };
        for conv in order {
            // Indices of removed nodes are reused, so check what `conv` is now.
            if rw.graph.nodes.contains_node(conv)
                && op_name(rw.graph, conv) == Some("conv2d")
                && rw.dependent.contains(&conv)
            {
                changed |= rw.fuse_at(conv);
            }
        }
        changed
    }

    fn explain(&self, graph: &Graph) -> Vec<String> {
        // Judge the graph `run` matches against: nested concats already flattened.
        let mut flat = graph.clone();
        flatten_concats(&mut flat);
        let graph = &flat;
        let dependent = input_dependent(graph);
        let mut notes = Vec::new();
        for id in graph.topo_order() {
            if !dependent.contains(&id) {
                continue;
            }
            match concat_conv(graph, &dependent, id) {
                Some(Err(why)) => notes.push(format!(
                    "fuse-fff: `{}` keeps its concat `{}`: {why}",
                    name(graph, id),
                    name(graph, behind_channelwise(graph, graph.inputs(id)[0]).1)
                )),
                Some(Ok(m)) => notes.extend(m.terms.iter().filter_map(|t| {
                    t.stopped.as_ref().map(|why| {
                        format!(
                            "fuse-fff: `{}` reads `{}` as written: {why}",
                            name(graph, id),
                            name(graph, t.source)
                        )
                    })
                })),
                None => {}
            }
            let Some(conv) = looks_like_top_down(graph, id).filter(|c| dependent.contains(c))
            else {
                continue;
            };
            if let Err(why) = top_down(graph, &dependent, &[conv], conv) {
                notes.push(format!(
                    "fuse-fff: `{}` is not fused with the resized summand of `{}`: {why}",
                    name(graph, conv),
                    name(graph, id)
                ));
            }
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::parse_text;

    /// A pass case from `tests/passes/`, without its directive lines.
    fn case(file: &str) -> Graph {
        let path = format!("{}/../tests/passes/{file}", env!("CARGO_MANIFEST_DIR"));
        let text: String = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        parse_text(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn explain_names_each_near_miss_and_why() {
        let notes = FuseFff.explain(&case("fuse_fff_near_miss.ir"));
        let expected = [
            (
                "`g` keeps its concat `gcat`",
                "grouped convolution (groups=2)",
            ),
            (
                "`h` keeps its concat `hcat`",
                "joins axis 2, not the channel axis",
            ),
            ("`o` keeps its concat `ocat`", "`ocat` is a graph output"),
            (
                "`f` reads `xc` as written",
                "by `pc` of shape [1, 4, 1, 1], not a single scalar",
            ),
            ("`f` reads `up` as written", "`up` has 2 users"),
            (
                "`f` reads `yq` as written",
                "scales by `q`, which is computed per inference",
            ),
            (
                "`l` is not fused with the resized summand of `m`",
                "`up` has 2 users",
            ),
        ];
        assert_eq!(notes.len(), expected.len(), "{notes:#?}");
        for (what, why) in expected {
            assert!(
                notes.iter().any(|n| n.contains(what) && n.contains(why)),
                "no note `{what}: ... {why}` in {notes:#?}"
            );
        }
    }

    /// A convolution over a concat with a product above [`MAX_DIRECT_MACS`] keeps its concat,
    /// and `explain` says why; the same convolution on a smaller map fuses.
    #[test]
    fn large_products_keep_their_concat() {
        let graph = |h: usize, w: usize| {
            parse_text(&format!(
                "graph t {{
  input %a: f32[1, 16, {h}, {w}]
  input %b: f32[1, 16, {h}, {w}]
  %cat = concat(%a, %b) {{axis=1}}: f32[1, 32, {h}, {w}]
  param %c.weight: f32[64, 32, 1, 1] = uniform(0.1)
  %c = conv2d(%cat, %c.weight) {{bias=false, dilation=[1, 1], groups=1, k=[1, 1], out=64, pad=[0, 0], s=[1, 1]}}: f32[1, 64, {h}, {w}]
  output %y = %c
}}
"
            ))
            .expect("parses")
        };
        // 32 x 64 multiply-adds per pixel: 2^17 on 8x8, 2^16 on 4x8.
        let mut large = graph(8, 8);
        let notes = FuseFff.explain(&large);
        assert!(
            notes
                .iter()
                .any(|n| n.contains("`c` keeps its concat `cat`")
                    && n.contains("131072 multiply-adds")
                    && n.contains("at most 65536")),
            "{notes:#?}"
        );
        assert!(!FuseFff.run(&mut large));
        let mut small = graph(4, 8);
        assert_eq!(FuseFff.explain(&small), Vec::<String>::new());
        assert!(FuseFff.run(&mut small));
    }

    #[test]
    fn explain_is_silent_where_everything_fuses() {
        for file in [
            "fuse_fff.ir",
            "fuse_fff_constant.ir",
            "fuse_fff_top_down.ir",
            "fuse_fff_dense.ir",
            "fuse_fff_preactivation.ir",
        ] {
            let graph = case(file);
            assert_eq!(FuseFff.explain(&graph), Vec::<String>::new(), "{file}");
            let mut fused = graph.clone();
            assert!(FuseFff.run(&mut fused), "{file}");
            assert!(
                !FuseFff.run(&mut fused),
                "{file}: a second run changed the graph"
            );
        }
    }
}
