//! `fold-haar-conv`: a `haar_dwt` read only by a `conv2d` (directly, or through a slice of its
//! channels such as WaveCNet's LL band) is folded into that convolution, which then reads the
//! DWT's input with a stride-2 kernel of twice the size.
//!
//! Why it is exact: channel `4c + k` of `y = haar_dwt(x)` at `[i, j]` is
//! `½ Σ_{di,dj} s_k(di, dj) x[c, 2i + di, 2j + dj]` with the Haar signs `s_k = ±1`. A
//! convolution of `y` (kernel `k`, stride `s`, padding `p`, weight `W[o, 4c + k, u, v]`)
//! therefore reads `x[c, 2(s·i + u − p) + di, …]`: a convolution of `x` with kernel `2k`,
//! stride `2s`, padding `2p` and weight `W'[o, c, 2u + di, 2v + dj] = ½ Σ_k s_k(di, dj)
//! W[o, 4c + k, u, v]`. That is `haar_idwt` applied to the weight (the Haar butterfly is
//! symmetric), so `1x1` becomes `2x2` stride 2 and `3x3` pad 1 becomes `6x6` stride 2 pad 2; the
//! zero padding of `y` is exactly the doubled zero padding of `x`, and output sizes agree. A
//! channel slice selects some bands: the channels it drops get zero weight.
//!
//! The new weight is `haar_idwt` of the original weight parameter, like `fold-batch-norm`'s, so checkpoints keep their keys and the
//! interpreter checks the rewrite. It removes the DWT and slice kernels and their
//! intermediates. The convolution's multiply-adds stay the same when it reads every band; a
//! slice that drops bands would make the folded kernel multiply zero weights (fourfold work
//! for WaveCNet's LL band), so such a site is left alone and `--explain` says why.
//! Only ungrouped, undilated convolutions fold: a group would see a subset of the bands, and
//! a dilated kernel over the bands is not one dense kernel over `x`.

use super::fusion::{add_op, fresh_name};
use super::Pass;
use crate::ir::{Graph, NodeKind, ValueId};
use crate::ops::{self, Attr, Attrs, AttrsExt};
use ndarray::{ArrayD, IxDyn};

pub struct FoldHaarConv;

/// A convolution reading a Haar DWT, possibly through a channel slice.
struct Site {
    conv: ValueId,
    dwt: ValueId,
    slice: Option<ValueId>,
}

fn op_name(graph: &Graph, id: ValueId) -> Option<&'static str> {
    graph.node(id).op().map(|o| o.name)
}

fn attrs(graph: &Graph, id: ValueId) -> &Attrs {
    match &graph.node(id).kind {
        NodeKind::Op { attrs, .. } => attrs,
        _ => unreachable!("only op nodes are matched"),
    }
}

/// Why `id`'s value is needed by something other than `reader`, if it is.
fn other_readers(graph: &Graph, id: ValueId, reader: ValueId) -> Option<String> {
    let name = &graph.node(id).name;
    if graph.outputs.iter().any(|o| o.value == id) {
        return Some(format!("`{name}` is a graph output"));
    }
    let others: Vec<String> = graph
        .users(id)
        .into_iter()
        .filter(|&u| u != reader)
        .map(|u| format!("`{}`", graph.node(u).name))
        .collect();
    let reads = graph.users(id).len() - others.len();
    if !others.is_empty() {
        Some(format!("`{name}` is also read by {}", others.join(", ")))
    } else if reads > 1 {
        Some(format!("`{name}` is read {reads} times by the same op"))
    } else {
        None
    }
}

/// The DWT site feeding `conv`: `None` when `conv` is not a convolution of a Haar DWT (or a
/// slice of one), `Err` with the reason when it is but cannot fold.
fn site(graph: &Graph, conv: ValueId) -> Option<Result<Site, String>> {
    if op_name(graph, conv) != Some("conv2d") {
        return None;
    }
    let input = graph.inputs(conv)[0];
    let (dwt, slice) = match op_name(graph, input) {
        Some("haar_dwt") => (input, None),
        // An empty selection leaves the convolution nothing to read, hence nothing to fold.
        Some("slice") if graph.node(input).numel() > 0 => {
            let source = graph.inputs(input)[0];
            if op_name(graph, source) != Some("haar_dwt") {
                return None;
            }
            (source, Some(input))
        }
        _ => return None,
    };
    let conv_name = &graph.node(conv).name;
    let through = slice.map_or(String::new(), |s| {
        format!(" through `{}`", graph.node(s).name)
    });
    let head = format!(
        "fold-haar-conv: `{conv_name}` reads the Haar DWT `{}`{through} but does not absorb it",
        graph.node(dwt).name
    );
    let a = attrs(graph, conv);
    let refusal = if a.int("groups") != 1 {
        Some(format!(
            "it is a grouped convolution (groups={}); only groups=1 folds, where every output \
             channel reads all the bands it keeps",
            a.int("groups")
        ))
    } else if a.ints("dilation") != [1, 1] {
        Some(format!(
            "its dilation is {:?}; a dilated kernel over the bands is not one dense kernel over \
             the DWT's input, so only dilation 1 folds",
            a.ints("dilation")
        ))
    } else if let Some(s) = slice.filter(|&s| ![1, -3].contains(&attrs(graph, s).int("axis"))) {
        Some(format!(
            "`{}` slices axis {} of the bands, not their channels; only a channel selection \
             between haar_dwt and conv2d folds",
            graph.node(s).name,
            attrs(graph, s).int("axis")
        ))
    } else {
        let chain_reader = slice.unwrap_or(conv);
        slice
            .and_then(|s| other_readers(graph, s, conv))
            .or_else(|| other_readers(graph, dwt, chain_reader))
            .map(|why| {
                format!(
                    "{why}, so the DWT is computed anyway and folding would only add \
                     multiply-adds to the convolution; it folds when the convolution is the \
                     DWT's only reader"
                )
            })
    };
    // Cost: the folded kernel multiplies every band, including the zero weights of bands
    // the slice drops, so folding a partial selection multiplies the work by all/kept.
    let refusal = refusal.or_else(|| {
        let s = slice?;
        let all = graph.node(dwt).shape[1];
        let kept = kept_channels(graph, s, all).len();
        (kept < all).then(|| {
            format!(
                "`{}` keeps {kept} of the DWT's {all} channels; folded, the convolution would \
                 multiply zero weights for the other {} and do {:.1}x the multiply-adds, which \
                 costs more than the DWT kernel it saves",
                graph.node(s).name,
                all - kept,
                all as f64 / kept as f64
            )
        })
    });
    Some(match refusal {
        Some(why) => Err(format!("{head}: {why}")),
        None => Ok(Site { conv, dwt, slice }),
    })
}

/// The DWT channels a slice keeps, in order: the slice evaluated on the channel indices, so
/// Python's bound rules come from the op table.
fn kept_channels(graph: &Graph, slice: ValueId, channels: usize) -> Vec<usize> {
    let def = ops::lookup("slice").expect("`slice` is in the op table");
    let index = ArrayD::from_shape_fn(IxDyn(&[1, channels, 1, 1]), |i| i[1] as f32);
    (def.eval)(attrs(graph, slice), &[&index])
        .iter()
        .map(|&c| c as usize)
        .collect()
}

/// Rewrites the convolution of `site` to read the DWT's input with the folded weight. The DWT
/// and the slice (which keeps every channel, see [`site`]) are left without edges; removing
/// them is the caller's (after every fold, so their slots are not reused and new nodes print
/// after the old ones).
fn fold(graph: &mut Graph, site: &Site) {
    let conv = site.conv;
    let weight = graph.inputs(conv)[1];
    let x = graph.inputs(site.dwt)[0];
    let name = fresh_name(graph, &format!("{}.haar_weight", graph.node(conv).name));
    let folded = add_op(graph, conv, name, "haar_idwt", Attrs::new(), &[weight]);

    if let NodeKind::Op { attrs, .. } = &mut graph.nodes[conv].kind {
        for key in ["k", "s", "pad"] {
            let doubled = attrs.ints(key).iter().map(|v| 2 * v).collect();
            attrs.insert(key.into(), Attr::Ints(doubled));
        }
    }
    graph.set_input(conv, 0, x);
    graph.set_input(conv, 1, folded);
    for dead in site.slice.into_iter().chain([site.dwt]) {
        graph.clear_inputs(dead);
    }
}

impl Pass for FoldHaarConv {
    fn name(&self) -> &'static str {
        "fold-haar-conv"
    }

    fn description(&self) -> &'static str {
        "fold a Haar DWT (or a channel slice of it) into the conv2d reading it: a stride-2 conv \
         on the DWT's input"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut dead = Vec::new();
        for conv in graph.topo_order() {
            // A multi-level DWT folds level by level into the same convolution.
            while let Some(Ok(found)) = site(graph, conv) {
                fold(graph, &found);
                dead.extend(found.slice.into_iter().chain([found.dwt]));
            }
        }
        for &id in &dead {
            graph.nodes.remove_node(id);
        }
        !dead.is_empty()
    }

    fn explain(&self, graph: &Graph) -> Vec<String> {
        graph
            .topo_order()
            .into_iter()
            .filter_map(|conv| site(graph, conv)?.err())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::parse_text;

    /// Text of a 1x1 `conv2d` named `name` over `input` (`cin` channels of 2x2), four outputs.
    fn conv(name: &str, input: &str, cin: usize, extra: &str) -> String {
        format!(
            "  param %{name}.weight: f32[4, {cin}, 1, 1] = uniform(0.5)\n  %{name} = \
             conv2d(%{input}, %{name}.weight) {{bias=false, {extra}, k=[1, 1], out=4, \
             pad=[0, 0], s=[1, 1]}}: f32[1, 4, 2, 2]\n"
        )
    }

    fn graph(lines: &[&str]) -> Graph {
        let text = [
            "graph t {\n  input %x: f32[1, 2, 4, 4]\n",
            &lines.concat(),
            "}\n",
        ]
        .concat();
        parse_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    const PLAIN: &str = "dilation=[1, 1], groups=1";

    /// Each near miss names the convolution, the DWT and why.
    #[test]
    fn near_misses_are_explained() {
        let graph = graph(&[
            "  %dwt = haar_dwt(%x): f32[1, 8, 2, 2]\n",
            "  %ll = slice(%dwt) {axis=1, end=8, start=0, step=4}: f32[1, 2, 2, 2]\n",
            &conv("shared", "ll", 2, PLAIN),
            "  %grouped_in = haar_dwt(%x): f32[1, 8, 2, 2]\n",
            &conv("grouped", "grouped_in", 4, "dilation=[1, 1], groups=2"),
            "  %dilated_in = haar_dwt(%x): f32[1, 8, 2, 2]\n",
            &conv("dilated", "dilated_in", 8, "dilation=[2, 2], groups=1"),
            "  %out_in = haar_dwt(%x): f32[1, 8, 2, 2]\n",
            &conv("seen", "out_in", 8, PLAIN),
            "  output %a = %shared\n  output %b = %ll\n  output %d = %grouped\n",
            "  output %e = %dilated\n  output %f = %seen\n  output %g = %out_in\n",
        ]);
        let why = FoldHaarConv.explain(&graph);
        let expect = [
            "fold-haar-conv: `shared` reads the Haar DWT `dwt` through `ll` but does not absorb \
             it: `ll` is a graph output, so the DWT is computed anyway",
            "fold-haar-conv: `grouped` reads the Haar DWT `grouped_in` but does not absorb it: \
             it is a grouped convolution (groups=2)",
            "fold-haar-conv: `dilated` reads the Haar DWT `dilated_in` but does not absorb it: \
             its dilation is [2, 2]",
            "fold-haar-conv: `seen` reads the Haar DWT `out_in` but does not absorb it: `out_in` \
             is a graph output",
        ];
        assert_eq!(why.len(), expect.len(), "{why:#?}");
        for (got, want) in why.iter().zip(expect) {
            assert!(got.starts_with(want), "{got}\nwant: {want}");
        }
        let mut unchanged = graph.clone();
        assert!(!FoldHaarConv.run(&mut unchanged), "nothing here may fold");
    }

    #[test]
    fn a_second_reader_of_the_dwt_or_a_non_channel_slice_blocks_the_fold() {
        let graph = graph(&[
            "  %dwt = haar_dwt(%x): f32[1, 8, 2, 2]\n",
            "  %ll = slice(%dwt) {axis=1, end=8, start=0, step=4}: f32[1, 2, 2, 2]\n",
            &conv("c", "ll", 2, PLAIN),
            "  %detail = slice(%dwt) {axis=1, end=8, start=1, step=1}: f32[1, 7, 2, 2]\n",
            "  %rows = slice(%dwt) {axis=-2, end=2, start=0, step=1}: f32[1, 8, 2, 2]\n",
            &conv("r", "rows", 8, PLAIN),
            "  output %c = %c\n  output %detail = %detail\n  output %r = %r\n",
        ]);
        let why = FoldHaarConv.explain(&graph);
        assert_eq!(why.len(), 2, "{why:#?}");
        assert!(
            why[0].contains("`dwt` is also read by `detail`, `rows`")
                || why[0].contains("`dwt` is also read by `rows`, `detail`"),
            "{}",
            why[0]
        );
        assert!(
            why[1].contains("`rows` slices axis -2 of the bands, not their channels"),
            "{}",
            why[1]
        );
    }
}
