//! Concatenations written in place: which values the CPU plan stores inside a
//! concatenation's buffer, so that the steps computing them write their parts of it and the
//! concatenation needs no step of its own.
//!
//! A `concat` qualifies when each operand is one contiguous block of its output (the axes
//! before the concatenated one have extent 1: one image, channels or tokens concatenated)
//! and every operand is computed per inference by a step (not a graph input, not a value
//! prepared from the weights), and none appears twice. Its operands are then placed at their
//! offsets in its buffer. Residual Dense Network's blocks concatenate a growing prefix
//! (`[x, c0]`, `[x, c0, c1]`, ...), each a new value: a concatenation whose operands all lie
//! in a later one at the same relative offsets *joins its family* and becomes a view of the
//! family's root, so the whole chain is one buffer written once, where each concatenation
//! copied everything before it again.
//!
//! A value can only be stored in one place, and a family's buffer lives as long as the last
//! value in it. Families are placed largest first (by the elements their concatenations would
//! copy). An operand already stored elsewhere, or read after the family's last reader (RDN's
//! block input, read again by the global feature fusion with every other block's output,
//! would keep each block's whole buffer alive to the end), is not placed: the family's
//! smallest concatenation keeps its step and copies it, with its other operands, into its
//! part of the buffer. That concatenation must hold every such operand, lie inside every
//! other one of the family and come before them; otherwise the whole family keeps its
//! copying steps, so that no step ever copies a value onto itself.

use std::collections::{HashMap, HashSet};

use crate::ir::{Graph, NodeKind, ValueId};
use crate::ops::AttrsExt;

/// The values stored inside others, and the concatenations that need no step.
#[derive(Debug, Default)]
pub(crate) struct InPlace {
    /// `value` is stored at element `offset` of `base` (itself possibly stored elsewhere).
    pub placed: Vec<(ValueId, ValueId, usize)>,
    /// Concatenations whose operands are all stored in their buffer.
    pub elided: HashSet<ValueId>,
}

/// A concatenation's operands and their element offsets in its output, if it qualifies.
fn plain_concat(
    graph: &Graph,
    id: ValueId,
    dependent: &HashSet<ValueId>,
) -> Option<Vec<(ValueId, usize)>> {
    let node = graph.node(id);
    let NodeKind::Op { op, attrs } = &node.kind else {
        return None;
    };
    if op.name != "concat" || !dependent.contains(&id) || node.numel() == 0 {
        return None;
    }
    let rank = node.shape.len() as i64;
    let axis = attrs.int("axis");
    let axis = usize::try_from(if axis < 0 { axis + rank } else { axis }).ok()?;
    if axis >= node.shape.len() || node.shape[..axis].iter().product::<usize>() != 1 {
        return None;
    }
    let operands = graph.inputs(id);
    let mut offset = 0;
    let mut parts = Vec::with_capacity(operands.len());
    for (i, &part) in operands.iter().enumerate() {
        let p = graph.node(part);
        let computed = matches!(p.kind, NodeKind::Op { .. } | NodeKind::Fused { .. });
        if !computed || !dependent.contains(&part) || operands[..i].contains(&part) {
            return None;
        }
        parts.push((part, offset));
        offset += p.numel();
    }
    (offset == node.numel()).then_some(parts)
}

/// Where `sub`'s operands lie in `of`'s, as one offset for all: `Some(base)` when operand
/// `k` of `sub` at offset `o` is an operand of `of` at `base + o`.
fn contained(sub: &[(ValueId, usize)], of: &[(ValueId, usize)]) -> Option<usize> {
    let at = |v: ValueId| of.iter().find(|(p, _)| *p == v).map(|&(_, o)| o);
    let &(first, o0) = sub.first()?;
    let base = at(first)?.checked_sub(o0)?;
    sub.iter()
        .all(|&(p, o)| at(p) == Some(base + o))
        .then_some(base)
}

/// Plans the concatenations of `graph` (per-inference values `dependent`) written in place.
pub(crate) fn concats_in_place(graph: &Graph, dependent: &HashSet<ValueId>) -> InPlace {
    let order = graph.topo_order();
    let position: HashMap<ValueId, usize> =
        order.iter().enumerate().map(|(i, &v)| (v, i)).collect();
    let outputs: HashSet<ValueId> = graph.outputs.iter().map(|o| o.value).collect();
    let last_use = |v: ValueId| {
        let read = graph
            .users(v)
            .iter()
            .map(|u| position[u])
            .max()
            .unwrap_or(0);
        if outputs.contains(&v) {
            order.len()
        } else {
            read.max(position[&v])
        }
    };
    // Latest first, so that a concatenation meets the later ones it may lie in.
    let concats: Vec<(ValueId, Vec<(ValueId, usize)>)> = order
        .iter()
        .rev()
        .filter_map(|&id| plain_concat(graph, id, dependent).map(|parts| (id, parts)))
        .collect();
    // Each concatenation's family root (an index into `concats`) and offset in it.
    let mut family: Vec<(usize, usize)> = Vec::with_capacity(concats.len());
    for (i, (_, parts)) in concats.iter().enumerate() {
        let joined = (0..i).find_map(|j| {
            let base = contained(parts, &concats[j].1)?;
            let (root, offset) = family[j];
            Some((root, offset + base))
        });
        family.push(joined.unwrap_or((i, 0)));
    }
    // Each family's members, smallest first; the largest families (by the elements their
    // concatenations copy) first.
    let numel = |i: usize| graph.node(concats[i].0).numel();
    let mut families: Vec<(usize, Vec<usize>)> = (0..concats.len())
        .filter(|&i| family[i].0 == i)
        .map(|root| {
            let mut members: Vec<usize> = (0..concats.len())
                .filter(|&i| family[i].0 == root)
                .collect();
            members.sort_by_key(|&i| numel(i));
            (root, members)
        })
        .collect();
    families.sort_by_key(|(_, members)| {
        std::cmp::Reverse(members.iter().map(|&i| numel(i)).sum::<usize>())
    });

    let mut placed: HashMap<ValueId, (ValueId, usize)> = HashMap::new();
    let resolve = |placed: &HashMap<ValueId, (ValueId, usize)>, v: ValueId| {
        let (mut root, mut at) = (v, 0);
        while let Some(&(base, offset)) = placed.get(&root) {
            (root, at) = (base, at + offset);
        }
        (root, at)
    };
    let mut out = InPlace::default();
    for (root, members) in families {
        let root_id = concats[root].0;
        let (anchor, anchor_at) = resolve(&placed, root_id);
        let spot = |i: usize| anchor_at + family[i].1;
        let free_or_at = |placed: &HashMap<ValueId, (ValueId, usize)>, v: ValueId, at: usize| {
            !placed.contains_key(&v) || resolve(placed, v) == (anchor, at)
        };
        if !members
            .iter()
            .all(|&i| i == root || free_or_at(&placed, concats[i].0, spot(i)))
        {
            continue;
        }
        // The family's buffer lives until its last reader; an operand read after that (RDN's
        // block output, read again by the global fusion) would keep the whole buffer alive
        // with it, so it is copied instead.
        let end = members
            .iter()
            .map(|&i| last_use(concats[i].0))
            .max()
            .unwrap_or(0);
        let bad: Vec<(ValueId, usize)> = members
            .iter()
            .flat_map(|&i| concats[i].1.iter().map(move |&(p, o)| (p, spot(i) + o)))
            .filter(|&(p, at)| !free_or_at(&placed, p, at) || last_use(p) > end)
            .collect();
        // Operands that cannot be placed are copied by the smallest concatenation, which
        // must hold them all, lie inside every other one and come before them: it writes its
        // part of the buffer, and the others are views of it.
        let writer = members[0];
        let writes = |p: ValueId, at: usize| {
            concats[writer]
                .1
                .iter()
                .any(|&(q, o)| q == p && spot(writer) + o == at)
        };
        let writer_fits = members[1..].iter().all(|&i| {
            position[&concats[writer].0] < position[&concats[i].0]
                && concats[writer].1.iter().all(|&(q, o)| {
                    concats[i]
                        .1
                        .iter()
                        .any(|&(p, po)| p == q && spot(i) + po == spot(writer) + o)
                })
        });
        if !bad.is_empty()
            && (writer == root || !bad.iter().all(|&(p, at)| writes(p, at)) || !writer_fits)
        {
            continue;
        }
        let copies = !bad.is_empty();
        for &i in &members {
            let (id, parts) = &concats[i];
            if i != root && !placed.contains_key(id) {
                placed.insert(*id, (anchor, spot(i)));
            }
            if copies && i == writer {
                // Its step copies its operands into its part of the buffer.
                continue;
            }
            for &(p, o) in parts {
                if !(copies && writes(p, spot(i) + o)) {
                    placed.entry(p).or_insert((anchor, spot(i) + o));
                }
            }
            out.elided.insert(*id);
        }
    }
    out.placed = placed
        .into_iter()
        .map(|(v, (base, offset))| (v, base, offset))
        .collect();
    out.placed.sort_unstable_by_key(|&(v, _, _)| v.index());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elab::{Options, Program};
    use crate::passes::input_dependent;

    fn graph(source: &str) -> Graph {
        let program =
            Program::from_source("t.bb", source).unwrap_or_else(|e| panic!("{}", e.render()));
        program
            .elaborate(&Options::default())
            .unwrap_or_else(|d| panic!("{d:?}"))
            .graph
    }

    fn named(g: &Graph, name: &str) -> ValueId {
        g.topo_order()
            .into_iter()
            .find(|&v| g.node(v).name == name)
            .unwrap_or_else(|| panic!("no `{name}`"))
    }

    /// A growing chain of concatenations is one buffer: every link is a view of the last,
    /// every operand stored where the last one has it.
    #[test]
    fn a_dense_chain_is_one_buffer() {
        let g = graph(
            "bb 0.1;\nmodel m() {\n    input x: f32[1, 2, 4, 4];\n    x0 = relu(x);\n    \
             a = conv2d(x0, out=3, k=1);\n    h1 = concat([x0, a], axis=1);\n    \
             b = conv2d(h1, out=3, k=1);\n    h2 = concat([x0, a, b], axis=1);\n    \
             output y = conv2d(h2, out=2, k=1);\n}\n",
        );
        let plan = concats_in_place(&g, &input_dependent(&g));
        let h2 = named(&g, "h2");
        let at = |name: &str| {
            let v = named(&g, name);
            plan.placed
                .iter()
                .find(|p| p.0 == v)
                .map(|&(_, base, offset)| (base, offset))
        };
        assert_eq!(at("x0"), Some((h2, 0)));
        assert_eq!(at("a"), Some((h2, 32)));
        assert_eq!(at("b"), Some((h2, 80)));
        assert_eq!(at("h1"), Some((h2, 0)));
        assert_eq!(at("h2"), None);
        assert_eq!(plan.elided.len(), 2);
    }

    /// Inputs, values prepared from the weights, an operand given twice and a batch of two
    /// (operands strided in the output) are copied as before; of two concatenations sharing
    /// an operand at different places, the larger family is written in place.
    #[test]
    fn what_cannot_be_placed_is_copied() {
        let g = graph(
            "bb 0.1;\nmodel m() {\n    input x: f32[1, 2, 4, 4];\n    input z: f32[2, 2, 4, 4];\n    \
             param w: f32[1, 2, 4, 4] = ones();\n    a = relu(x);\n    \
             output p = concat([x, a], axis=1);\n    output q = concat([a, w * 2.0], axis=1);\n    \
             output r = concat([a, a], axis=1);\n    zz = relu(z);\n    \
             output s = concat([zz, zz * 2.0], axis=1);\n    b = sigmoid(x);\n    \
             output t = concat([b, a, b * 3.0], axis=1);\n    output u = concat([a, b], axis=1);\n}\n",
        );
        let plan = concats_in_place(&g, &input_dependent(&g));
        let t = named(&g, "t");
        assert_eq!(plan.elided, HashSet::from([t]), "{plan:?}");
        assert_eq!(plan.placed.len(), 3, "{plan:?}");
        assert!(plan.placed.iter().all(|&(_, base, _)| base == t));
    }
}
