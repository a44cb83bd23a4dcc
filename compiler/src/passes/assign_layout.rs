//! `assign-layout`: chooses the axis order (the physical layout) in which each region of
//! layout-neutral ops computes, so that layout changes sit where a kernel absorbs them.
//!
//! Values are stored row-major in the order of their axes, so a value's layout is its axis
//! order and a layout change is an explicit `permute` node: the source's own, or one this
//! pass inserts. The text form shows every one, inside a fusion group when a kernel absorbs it.
//!
//! *What a layout change costs.* Nothing when a neighbouring kernel absorbs it: the kernel
//! producing its input stores each element at its permuted position (a conv/linear/matmul
//! epilogue or an elementwise chain, see `fusion::chain_after`, which also covers a depthwise
//! conv feeding a channels-last LayerNorm), or the attention kernel reading it loads through
//! it. That needs the input to be computed by such an op and read by nothing else. Otherwise
//! the change is a kernel of its own that reads and writes the whole tensor.
//!
//! *Regions.* An elementwise op whose operands computed per inference all have its result's
//! shape does not care about axis order (operands prepared from the weights may broadcast;
//! they are re-laid-out once, at load time). A region is a connected set of such ops; all
//! its values share one shape, so the whole region can compute in another axis order if its
//! entries and exits are converted. The orders worth trying are those that cancel a layout
//! change on the region's boundary (e.g. channels-last when a `permute(.., [0, 2, 3, 1])`
//! enters it). For each, the pass rewrites a copy of the graph: the region's ops take the new
//! order, boundary layout changes compose with the conversion (vanishing when they cancel),
//! and every other entry and exit gets an explicit conversion. It keeps the copy only when
//! the bytes of layout changes that no kernel absorbs strictly shrink, so a region goes
//! channels-last exactly where that removes a conversion kernel, and the pass never adds
//! one. Every conversion such a rewrite can touch has the region's size, so comparing bytes
//! compares kernels.
//!
//! On ConvNeXt the spec's layout is already the best one: a block's channels-last stretch
//! (LayerNorm, MLP, layer scale) is entered by the depthwise conv storing through
//! `permute(.., [0, 2, 3, 1])` (`fuse-dwconv-norm`) and left by the fc2 epilogue storing
//! through `permute(.., [0, 3, 1, 2])`, after which the residual add joins that epilogue:
//! three kernels per block, both changes absorbed. Moving the residual stream channels-last
//! too would only move the conversions to where no kernel absorbs them (the depthwise conv
//! reads NCHW, and the stream's values have two readers each), so the pass leaves it.
//! `explain` lists each layout change that still needs a kernel of its own, and why.

use super::fuse_attention;
use super::fuse_epilogue::ANCHORS;
use super::fusion::{
    add_op, fresh_name, input_dependent, is_elementwise, is_layout_change, must_be_written,
};
use super::Pass;
use crate::ir::{Graph, NodeKind, ValueId};
use crate::ops::{Attr, Attrs, AttrsExt};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::{HashMap, HashSet};

pub struct AssignLayout;

/// An axis order: result axis `i` is axis `order[i]` of the value it is applied to.
type Order = Vec<usize>;

/// The axis order of `id` if it is a layout change, with negative axes resolved.
fn change_order(graph: &Graph, id: ValueId) -> Option<Order> {
    let node = graph.node(id);
    let NodeKind::Op { op, attrs } = &node.kind else {
        return None;
    };
    let rank = node.shape.len() as i64;
    (op.name == "permute").then(|| {
        attrs
            .ints("dims")
            .iter()
            .map(|&d| (if d < 0 { d + rank } else { d }) as usize)
            .collect()
    })
}

fn inverse(order: &[usize]) -> Order {
    let mut inv = vec![0; order.len()];
    for (i, &d) in order.iter().enumerate() {
        inv[d] = i;
    }
    inv
}

fn is_identity(order: &[usize]) -> bool {
    order.iter().enumerate().all(|(i, &d)| i == d)
}

/// `outer` applied after `inner`, as one order.
fn compose(inner: &[usize], outer: &[usize]) -> Order {
    outer.iter().map(|&d| inner[d]).collect()
}

/// Why the per-inference layout change `id` needs a kernel of its own, or `None` when a
/// neighbouring kernel absorbs it (see the module doc).
fn unabsorbed(graph: &Graph, id: ValueId) -> Option<String> {
    let src = graph.inputs(id)[0];
    let node = graph.node(src);
    let why = match (must_be_written(graph, src), &node.kind) {
        (Some(why), _) => why,
        (None, NodeKind::Input) => format!("`{}` is a graph input", node.name),
        (None, NodeKind::Op { op, .. }) if ANCHORS.contains(&op.name) || is_elementwise(node) => {
            return None
        }
        (None, NodeKind::Op { op, .. }) => format!(
            "`{}` is computed by `{}`, whose kernel does not store through a layout change",
            node.name, op.name
        ),
        (None, _) => format!(
            "`{}` is computed by a kernel that does not store through a layout change",
            node.name
        ),
    };
    (!fuse_attention::reads_through(graph, id)).then_some(why)
}

/// The per-inference layout changes no kernel absorbs, with the reason for each.
fn standalone_changes(graph: &Graph) -> Vec<(ValueId, String)> {
    let per_inference = input_dependent(graph);
    graph
        .topo_order()
        .into_iter()
        .filter(|id| per_inference.contains(id) && is_layout_change(graph.node(*id)))
        .filter_map(|id| Some((id, unabsorbed(graph, id)?)))
        .collect()
}

/// Bytes of the layout changes that need a kernel of their own: what the pass minimises.
fn cost(graph: &Graph) -> usize {
    standalone_changes(graph)
        .iter()
        .map(|(id, _)| graph.node(*id).numel() * std::mem::size_of::<f32>())
        .sum()
}

/// An elementwise op computed per inference whose per-inference operands all have its shape.
fn is_neutral(graph: &Graph, id: ValueId, per_inference: &HashSet<ValueId>) -> bool {
    let node = graph.node(id);
    per_inference.contains(&id)
        && is_elementwise(node)
        && graph
            .inputs(id)
            .iter()
            .all(|i| !per_inference.contains(i) || graph.node(*i).shape == node.shape)
}

/// The regions of `graph` (connected sets of layout-neutral ops), each in topological order.
fn regions(graph: &Graph, per_inference: &HashSet<ValueId>) -> Vec<Vec<ValueId>> {
    let order = graph.topo_order();
    let neutral: HashSet<ValueId> = order
        .iter()
        .copied()
        .filter(|&id| is_neutral(graph, id, per_inference))
        .collect();
    let mut region_of: HashMap<ValueId, usize> = HashMap::new();
    let mut count = 0;
    for &start in &order {
        if !neutral.contains(&start) || region_of.contains_key(&start) {
            continue;
        }
        let mut stack = vec![start];
        region_of.insert(start, count);
        while let Some(v) = stack.pop() {
            for next in graph.inputs(v).into_iter().chain(graph.users(v)) {
                if neutral.contains(&next) && !region_of.contains_key(&next) {
                    region_of.insert(next, count);
                    stack.push(next);
                }
            }
        }
        count += 1;
    }
    let mut out = vec![Vec::new(); count];
    for id in order {
        if let Some(&r) = region_of.get(&id) {
            out[r].push(id);
        }
    }
    out
}

/// The axis orders that cancel a layout change on the region's boundary. `None` when a
/// layout change leads from the region back into it (a rewrite would have to move both
/// ends at once).
fn candidates(graph: &Graph, region: &HashSet<ValueId>) -> Option<Vec<Order>> {
    let mut found: Vec<Order> = Vec::new();
    for &v in region {
        for src in graph.inputs(v) {
            let Some(order) = change_order(graph, src).filter(|_| !region.contains(&src)) else {
                continue;
            };
            if region.contains(&graph.inputs(src)[0]) {
                return None;
            }
            found.push(inverse(&order));
        }
        for user in graph.users(v) {
            if let Some(order) = change_order(graph, user).filter(|_| !region.contains(&user)) {
                found.push(order);
            }
        }
    }
    found.sort();
    found.dedup();
    found.retain(|o| !is_identity(o));
    Some(found)
}

/// What a conversion to `order` is called: `x.channels_last`, `x.channels_first`, or
/// `x.permute`.
fn conversion_name(graph: &Graph, src: ValueId, order: &[usize]) -> String {
    let rank = order.len();
    let last: Order = std::iter::once(0)
        .chain(2..rank)
        .chain(std::iter::once(1))
        .collect();
    let label = if rank >= 3 && order == last.as_slice() {
        "channels_last"
    } else if rank >= 3 && order == inverse(&last).as_slice() {
        "channels_first"
    } else {
        "permute"
    };
    fresh_name(graph, &format!("{}.{label}", graph.node(src).name))
}

/// Adds `permute(src, order)`.
fn add_conversion(graph: &mut Graph, src: ValueId, order: &[usize]) -> ValueId {
    let name = conversion_name(graph, src, order);
    let dims = order.iter().map(|&d| d as i64).collect();
    let attrs = Attrs::from([("dims".to_string(), Attr::Ints(dims))]);
    add_op(graph, src, name, "permute", attrs, &[src])
}

/// `src` as a region computing in `order` reads it: converted, composed with the layout
/// change that produced it, or (a weight broadcast) brought to the region's rank and
/// re-laid-out once at load time.
fn entry(
    graph: &mut Graph,
    src: ValueId,
    order: &[usize],
    per_inference: &HashSet<ValueId>,
) -> ValueId {
    let node = graph.node(src);
    if per_inference.contains(&src) {
        let Some(before) = change_order(graph, src) else {
            return add_conversion(graph, src, order);
        };
        let composed = compose(&before, order);
        let origin = graph.inputs(src)[0];
        return if is_identity(&composed) {
            origin
        } else {
            add_conversion(graph, origin, &composed)
        };
    }
    if node.numel() == 1 {
        return src;
    }
    let missing = order.len() - node.shape.len();
    let aligned = if missing == 0 {
        src
    } else {
        let shape: Vec<i64> = std::iter::repeat_n(1, missing)
            .chain(node.shape.iter().map(|&d| d as i64))
            .collect();
        let name = fresh_name(graph, &format!("{}.reshape", node.name));
        let attrs = Attrs::from([("shape".to_string(), Attr::Ints(shape))]);
        add_op(graph, src, name, "reshape", attrs, &[src])
    };
    add_conversion(graph, aligned, order)
}

/// Makes `region` (whose values share one shape) compute in `order` relative to its current
/// axis order, converting at its entries and exits.
fn relayout(
    graph: &mut Graph,
    region: &[ValueId],
    order: &[usize],
    per_inference: &HashSet<ValueId>,
) {
    let members: HashSet<ValueId> = region.iter().copied().collect();
    let back = inverse(order);
    // Readers outside the region and the outputs, taken before any conversion is added.
    let exits: Vec<(ValueId, ValueId, usize)> = region
        .iter()
        .flat_map(|&v| {
            graph
                .nodes
                .edges_directed(v, Direction::Outgoing)
                .filter(|e| !members.contains(&e.target()))
                .map(move |e| (v, e.target(), *e.weight()))
                .collect::<Vec<_>>()
        })
        .collect();
    let outputs: Vec<usize> = (0..graph.outputs.len())
        .filter(|&i| members.contains(&graph.outputs[i].value))
        .collect();

    let mut entered: HashMap<ValueId, ValueId> = HashMap::new();
    for &v in region {
        let mut operands: Vec<(usize, ValueId)> = graph
            .nodes
            .edges_directed(v, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        operands.sort_unstable();
        for (pos, src) in operands {
            if members.contains(&src) {
                continue;
            }
            let converted = match entered.get(&src) {
                Some(&c) => c,
                None => {
                    let c = entry(graph, src, order, per_inference);
                    entered.insert(src, c);
                    c
                }
            };
            graph.set_input(v, pos, converted);
        }
        let shape = order.iter().map(|&d| graph.node(v).shape[d]).collect();
        graph.nodes[v].shape = shape;
    }
    // A layout change the region read through composes into its conversion; nothing else
    // may still need the old one.
    for src in entered.into_keys() {
        let unread = graph.users(src).is_empty() && !graph.outputs.iter().any(|o| o.value == src);
        if unread && change_order(graph, src).is_some() {
            graph.nodes.remove_node(src);
        }
    }

    let mut left: HashMap<ValueId, ValueId> = HashMap::new();
    for (v, user, pos) in exits {
        if let Some(after) = change_order(graph, user) {
            // permute(v, o) = permute(v', compose(back, o)), v' being v in the new order.
            let composed = compose(&back, &after);
            if is_identity(&composed) {
                graph.replace_uses(user, v);
                graph.nodes.remove_node(user);
            } else if let NodeKind::Op { attrs, .. } = &mut graph.nodes[user].kind {
                let dims = composed.iter().map(|&d| d as i64).collect();
                attrs.insert("dims".to_string(), Attr::Ints(dims));
            }
            continue;
        }
        let converted = *left
            .entry(v)
            .or_insert_with(|| add_conversion(graph, v, &back));
        graph.set_input(user, pos, converted);
    }
    for i in outputs {
        let v = graph.outputs[i].value;
        let converted = *left
            .entry(v)
            .or_insert_with(|| add_conversion(graph, v, &back));
        graph.outputs[i].value = converted;
    }
}

impl Pass for AssignLayout {
    fn name(&self) -> &'static str {
        "assign-layout"
    }

    fn description(&self) -> &'static str {
        "compute layout-neutral regions in the axis order (e.g. channels-last) that leaves fewest conversion kernels"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut changed = false;
        let mut current = cost(graph);
        // Each kept rewrite strictly lowers `current`, so this ends.
        'search: while current > 0 {
            let per_inference = input_dependent(graph);
            for region in regions(graph, &per_inference) {
                let members: HashSet<ValueId> = region.iter().copied().collect();
                let mut best: Option<(usize, Graph)> = None;
                for order in candidates(graph, &members).unwrap_or_default() {
                    let mut trial = graph.clone();
                    relayout(&mut trial, &region, &order, &per_inference);
                    let bytes = cost(&trial);
                    if bytes < best.as_ref().map_or(current, |(b, _)| *b) {
                        best = Some((bytes, trial));
                    }
                }
                if let Some((bytes, trial)) = best {
                    *graph = trial;
                    current = bytes;
                    changed = true;
                    continue 'search;
                }
            }
            break;
        }
        changed
    }

    fn explain(&self, graph: &Graph) -> Vec<String> {
        let mut after = graph.clone();
        self.run(&mut after);
        standalone_changes(&after)
            .into_iter()
            .map(|(id, why)| {
                let node = after.node(id);
                format!(
                    "assign-layout: layout change `{}` ({:?}) needs a kernel of its own: {why}",
                    node.name, node.shape
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::parse_text;

    #[test]
    fn explains_a_layout_change_it_cannot_place_and_keeps_it() {
        let mut g = parse_text(
            "graph t {
  input %x1: f32[1, 3, 3, 4]
  input %x2: f32[1, 4, 3, 3]
  %x1t = permute(%x1) {dims=[0, 3, 1, 2]}: f32[1, 4, 3, 3]
  %both = add(%x1t, %x2): f32[1, 4, 3, 3]
  output %c = %both
}",
        )
        .expect("valid IR");
        let why = "assign-layout: layout change `x1t` ([1, 4, 3, 3]) needs a kernel of its own: \
                   `x1` is a graph input";
        assert_eq!(AssignLayout.explain(&g), [why]);
        assert!(!AssignLayout.run(&mut g));
    }

    #[test]
    fn composing_orders_is_applying_them_in_turn() {
        // Distinct sizes, so a shape shows exactly which axis went where.
        let shape = [2, 3, 5, 7];
        let apply =
            |order: &[usize], s: &[usize]| -> Vec<usize> { order.iter().map(|&d| s[d]).collect() };
        let last = [0, 2, 3, 1];
        let swap = [1, 0, 3, 2];
        for (inner, outer) in [(last, swap), (swap, last), (last, last)] {
            assert_eq!(
                apply(&compose(&inner, &outer), &shape),
                apply(&outer, &apply(&inner, &shape))
            );
        }
        assert_eq!(apply(&inverse(&last), &apply(&last, &shape)), shape);
        assert!(is_identity(&compose(&last, &inverse(&last))));
        assert!(!is_identity(&last));
    }
}
