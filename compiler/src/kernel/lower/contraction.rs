//! Contractions: `conv2d` (not depthwise; groups become a batch axis), `conv1d`, `linear`,
//! `matmul` and `conv_transpose2d` become a [`Contraction`] over strided or im2col operands.
//! In an `epilogue` group the elementwise chain after the contraction (and the contraction's
//! own bias) becomes its [`Epilogue`], inlined by the pointwise lowering with the product
//! read back from the output buffer. A convolution reading a value computed inside its group
//! (a folded resize or per-channel op) is left to the loop lowering, which computes it
//! directly and applies that computation while reading.

use super::{flatten, unflatten, LowerError, Lowering, Override};
use crate::ir::{NodeKind, ValueId};
use crate::kernel::index::{self, Index};
use crate::kernel::{
    BatchDim, Body, Contraction, ConvGeometry, Epilogue, Operand, ProductLayout, Stmt, Tiling,
};
use crate::ops::AttrsExt;

/// Block sizes handed to the GEMM driver: the epilogue runs on tiles of at most
/// `mc × nc` while they are in cache.
const TILING: Tiling = Tiling {
    mc: 64,
    nc: 256,
    kc: 256,
};

/// Ops lowered to a [`Contraction`] (a conv2d only when it is not depthwise).
pub const CONTRACTIONS: &[&str] = &["linear", "matmul", "conv2d", "conv1d", "conv_transpose2d"];

/// The result tensor's index of epilogue element `(batch, row, col)`.
type ResultIndex = Box<dyn Fn(&Index, &Index, &Index) -> Vec<Index>>;

/// One batch axis: extent and the strides of `a`, `b` and the output along it.
struct Axis {
    extent: usize,
    a: usize,
    b: usize,
    out: usize,
}

/// The product part of a contraction and how its output index maps to the result tensor.
struct Product {
    m: usize,
    n: usize,
    k: usize,
    axes: Vec<Axis>,
    a: OperandKind,
    b: OperandKind,
    layout: ProductLayout,
    /// The epilogue's `[batch, rows, cols]` extents.
    epilogue_dims: [usize; 3],
    /// The result tensor's index of epilogue element `(batch, row, col)`.
    result_index: ResultIndex,
    /// Which axis of the result index selects the bias element.
    bias_axis: usize,
}

enum OperandKind {
    Strided {
        buf_operand: usize,
        row_stride: usize,
        col_stride: usize,
    },
    Im2col {
        buf_operand: usize,
        geometry: ConvGeometry,
    },
}

/// The kernel of a contraction group or op ending at `out`, or `None` if there is none.
pub fn lower(cx: &mut Lowering, out: ValueId) -> Result<Option<Body>, LowerError> {
    // The contraction is the op reading only kernel buffers: the single op of an op kernel,
    // or the first op of an epilogue group's body.
    let reads_leaves = |n: ValueId| cx.graph.inputs(n).iter().all(|i| cx.leaves.contains_key(i));
    let anchor = if reads_leaves(out) {
        out
    } else {
        let order = cx.graph.topo_order();
        let first = order.into_iter().find(|&n| {
            cx.graph
                .node(n)
                .op()
                .is_some_and(|op| CONTRACTIONS.contains(&op.name) && !cx.is_depthwise(n))
        });
        match first {
            Some(n) => n,
            None => return Ok(None),
        }
    };
    let Some(mut product) = product(cx, anchor) else {
        return Ok(None);
    };
    // A chain ending in permutes: the product is written straight into the permuted output.
    // Rows flattened over several leading axes rarely permute to one stride (ConvNeXt's fc2
    // back to NCHW at batch > 1); the first leading axis as a batch axis then often does.
    let perm = chain_permutation(cx, anchor, out)?;
    if let Some(p) = &perm {
        if permuted_layout(cx, &product, p, out).is_err() {
            if let Some(split) = product_with_batch(cx, anchor) {
                product = split;
            }
        }
    }
    // Operand positions in the anchor map to kernel buffers through the leaves.
    let anchor_inputs = cx.graph.inputs(anchor);
    // A convolution reading a value computed inside the group (a folded resize, a per-channel
    // op) is computed directly by the loop kernel instead, which applies the computation
    // while reading.
    let computed_operand = anchor_inputs.iter().any(|i| !cx.leaves.contains_key(i));
    if computed_operand
        && cx
            .graph
            .node(anchor)
            .op()
            .is_some_and(|op| op.name == "conv2d")
    {
        return Ok(None);
    }
    let buf_of = |cx: &Lowering, pos: usize| -> Result<usize, LowerError> {
        cx.leaves.get(&anchor_inputs[pos]).copied().ok_or_else(|| {
            super::unsupported(
                &format!("fused {}", cx.origin),
                "a contraction reading a value computed inside the group (a folded resize)",
            )
        })
    };
    let operand = |cx: &Lowering, kind: &OperandKind, pick: fn(&Axis) -> usize| {
        let batch_strides = product.axes.iter().map(pick).collect();
        Ok::<_, LowerError>(match kind {
            OperandKind::Strided {
                buf_operand,
                row_stride,
                col_stride,
            } => Operand::Strided {
                buf: buf_of(cx, *buf_operand)?,
                offset: 0,
                row_stride: *row_stride,
                col_stride: *col_stride,
                batch_strides,
            },
            OperandKind::Im2col {
                buf_operand,
                geometry,
            } => Operand::Im2col {
                buf: buf_of(cx, *buf_operand)?,
                batch_strides,
                geometry: geometry.clone(),
            },
        })
    };
    let a = operand(cx, &product.a, |x| x.a)?;
    let b = operand(cx, &product.b, |x| x.b)?;
    let out_buf = cx.output_buf();
    // The epilogue: the anchor's value is the product plus its bias, then the chain.
    let NodeKind::Op { attrs, op } = &cx.graph.node(anchor).kind else {
        unreachable!("the anchor is an op")
    };
    let has_bias = op.name != "matmul" && attrs.flag("bias");
    let bias = if has_bias {
        Some((buf_of(cx, 2)?, product.bias_axis))
    } else {
        None
    };
    let mut layout = product.layout.clone();
    let mut out_strides: Vec<usize> = product.axes.iter().map(|x| x.out).collect();
    if let Some(p) = &perm {
        (layout, out_strides) = permuted_layout(cx, &product, p, out)?;
    }
    let epilogue = if anchor != out || bias.is_some() {
        cx.overrides.insert(
            anchor,
            Override::Buffer {
                buf: out_buf,
                bias,
                perm: perm.clone(),
            },
        );
        let [eb, er, ec] = product.epilogue_dims;
        let (batch, row, col) = (cx.var(eb), cx.var(er), cx.var(ec));
        let mut idx =
            (product.result_index)(&Index::Var(batch), &Index::Var(row), &Index::Var(col));
        if let Some(p) = &perm {
            idx = p.iter().map(|&a| idx[a].clone()).collect();
        }
        let value = cx.value_at(out, &idx)?;
        let index = flatten(&idx, cx.shape(out));
        let body = cx.statement(Stmt::Store {
            buf: out_buf,
            index,
            value,
        });
        Some(Epilogue {
            batch,
            row,
            col,
            body,
        })
    } else {
        None
    };
    Ok(Some(Body::Contraction(Box::new(Contraction {
        m: product.m,
        n: product.n,
        k: product.k,
        batch: product
            .axes
            .iter()
            .zip(out_strides)
            .map(|(x, out_stride)| BatchDim {
                extent: x.extent,
                out_stride,
            })
            .collect(),
        a,
        b,
        out: out_buf,
        layout,
        tiling: TILING,
        epilogue,
    }))))
}

/// The composed permutation of the `permute` ops on the chain from `anchor` to `out`
/// (`out` index `k` is the anchor's index `perm[k]`), `None` if there are none. The other
/// ops on the chain must keep the shape (elementwise).
pub(super) fn chain_permutation(
    cx: &Lowering,
    anchor: ValueId,
    out: ValueId,
) -> Result<Option<Vec<usize>>, LowerError> {
    let mut perm: Vec<usize> = (0..cx.shape(out).len()).collect();
    let mut any = false;
    let mut node = out;
    while node != anchor {
        let NodeKind::Op { op, attrs } = &cx.graph.node(node).kind else {
            return Err(super::unsupported(
                &cx.origin,
                "an epilogue chain through a non-op",
            ));
        };
        let inputs = cx.graph.inputs(node);
        let on_chain: Vec<ValueId> = inputs
            .iter()
            .copied()
            .filter(|&i| reaches(cx, i, anchor))
            .collect();
        let [next] = on_chain[..] else {
            return Err(super::unsupported(
                op.name,
                "an epilogue op reading the product twice",
            ));
        };
        if op.name == "permute" {
            let rank = perm.len() as i64;
            let dims: Vec<usize> = attrs
                .ints("dims")
                .iter()
                .map(|&d| if d < 0 { d + rank } else { d } as usize)
                .collect();
            perm = perm.iter().map(|&k| dims[k]).collect();
            any = true;
        } else if cx.shape(next) != cx.shape(node) {
            return Err(super::unsupported(
                op.name,
                "an epilogue op that changes the product's shape",
            ));
        }
        node = next;
    }
    Ok(any.then_some(perm))
}

/// Whether `from` is `to` or computed from it.
fn reaches(cx: &Lowering, from: ValueId, to: ValueId) -> bool {
    let mut stack = vec![from];
    let mut seen = std::collections::HashSet::new();
    while let Some(n) = stack.pop() {
        if n == to {
            return true;
        }
        if seen.insert(n) && !cx.leaves.contains_key(&n) {
            stack.extend(cx.graph.inputs(n));
        }
    }
    false
}

/// The dense layout (row, column and batch strides) that puts product element `(b, i, j)`
/// where the permuted output keeps it.
fn permuted_layout(
    cx: &mut Lowering,
    product: &Product,
    perm: &[usize],
    out: ValueId,
) -> Result<(ProductLayout, Vec<usize>), LowerError> {
    let origin = cx.origin.clone();
    let fail = || super::unsupported(&origin, "a permuted product that is not a strided matrix");
    if !matches!(product.layout, ProductLayout::Dense { .. }) {
        return Err(fail());
    }
    let [eb, er, ec] = product.epilogue_dims;
    let (b, i, j) = (cx.var(eb), cx.var(er), cx.var(ec));
    let idx = (product.result_index)(&Index::Var(b), &Index::Var(i), &Index::Var(j));
    let permuted: Vec<Index> = perm.iter().map(|&a| idx[a].clone()).collect();
    let flat = flatten(&permuted, cx.shape(out));
    let (Some(rs), Some(cs)) = (flat.affine_coefficient(i), flat.affine_coefficient(j)) else {
        return Err(fail());
    };
    // Batch strides: where the first element of each batch axis's unit step lands.
    let at = |bv: i64| flat.eval(&|v| if v == b { bv } else { 0 }, &|_, _| 0);
    let mut strides = Vec::new();
    let mut step = 1i64;
    for x in product.axes.iter().rev() {
        strides.push((at(step) - at(0)) as usize);
        step *= x.extent as i64;
    }
    strides.reverse();
    Ok((
        ProductLayout::Dense {
            row_stride: rs as usize,
            col_stride: cs as usize,
        },
        strides,
    ))
}

fn pair(attrs: &crate::ops::Attrs, name: &str) -> [usize; 2] {
    let v = attrs.ints(name);
    [v[0] as usize, v[1] as usize]
}

/// The product of a `linear` op `id` with its first leading axis as a batch axis (rows over
/// the remaining leading axes), or `None` if `id` is no such op or has a single leading axis.
fn product_with_batch(cx: &Lowering, id: ValueId) -> Option<Product> {
    let op = cx.graph.node(id).op()?;
    let ys = cx.shape(id).to_vec();
    if op.name != "linear" || ys.len() < 3 || ys[0] == 1 {
        return None;
    }
    let mut flat = product(cx, id)?;
    let (outs, features) = (flat.n, flat.k);
    let lead = ys[1..ys.len() - 1].to_vec();
    let rows: usize = lead.iter().product();
    flat.m = rows;
    flat.axes = vec![Axis {
        extent: ys[0],
        a: rows * features,
        b: 0,
        out: rows * outs,
    }];
    flat.epilogue_dims = [ys[0], rows, outs];
    flat.result_index = Box::new(move |b, r, c| {
        let mut i = vec![b.clone()];
        i.extend(unflatten(r, &lead));
        i.push(c.clone());
        i
    });
    Some(flat)
}

/// The product of contraction op `id`, or `None` if `id` is not one (a depthwise conv is a
/// direct loop nest instead).
fn product(cx: &Lowering, id: ValueId) -> Option<Product> {
    let NodeKind::Op { op, attrs } = &cx.graph.node(id).kind else {
        return None;
    };
    if !CONTRACTIONS.contains(&op.name) {
        return None;
    }
    let inputs = cx.graph.inputs(id);
    let xs = cx.shape(inputs[0]).to_vec();
    let ws = cx.shape(inputs[1]).to_vec();
    let ys = cx.shape(id).to_vec();
    let keep = |axes: Vec<Axis>| {
        axes.into_iter()
            .filter(|x| x.extent > 1)
            .collect::<Vec<_>>()
    };
    match op.name {
        "linear" => {
            let (features, outs) = (ws[1], ws[0]);
            let rows = xs.iter().product::<usize>() / features;
            let lead = ys[..ys.len() - 1].to_vec();
            Some(Product {
                m: rows,
                n: outs,
                k: features,
                axes: Vec::new(),
                a: OperandKind::Strided {
                    buf_operand: 0,
                    row_stride: features,
                    col_stride: 1,
                },
                // B(k, j) = weight[j, k].
                b: OperandKind::Strided {
                    buf_operand: 1,
                    row_stride: 1,
                    col_stride: features,
                },
                layout: ProductLayout::Dense {
                    row_stride: outs,
                    col_stride: 1,
                },
                epilogue_dims: [1, rows, outs],
                result_index: Box::new(move |_, r, c| {
                    let mut i = unflatten(r, &lead);
                    i.push(c.clone());
                    i
                }),
                bias_axis: ys.len() - 1,
            })
        }
        "matmul" => {
            let (m, k, n) = (xs[xs.len() - 2], xs[xs.len() - 1], ws[ws.len() - 1]);
            let batch = ys[..ys.len() - 2].to_vec();
            // Strides of each operand along the broadcast batch axes (0 where broadcast).
            let strides = |s: &[usize], mat: usize| -> Vec<usize> {
                let lead = batch.len() - (s.len() - 2);
                let mut stride = mat;
                let mut out = vec![0; batch.len()];
                for j in (0..s.len() - 2).rev() {
                    out[lead + j] = if s[j] == 1 { 0 } else { stride };
                    stride *= s[j];
                }
                out
            };
            let (sa, sb) = (strides(&xs, m * k), strides(&ws, k * n));
            let mut out_stride = m * n;
            let mut axes = Vec::new();
            for j in (0..batch.len()).rev() {
                axes.push(Axis {
                    extent: batch[j],
                    a: sa[j],
                    b: sb[j],
                    out: out_stride,
                });
                out_stride *= batch[j];
            }
            axes.reverse();
            let axes = keep(axes);
            let total: usize = batch.iter().product();
            Some(Product {
                m,
                n,
                k,
                axes,
                a: OperandKind::Strided {
                    buf_operand: 0,
                    row_stride: k,
                    col_stride: 1,
                },
                b: OperandKind::Strided {
                    buf_operand: 1,
                    row_stride: n,
                    col_stride: 1,
                },
                layout: ProductLayout::Dense {
                    row_stride: n,
                    col_stride: 1,
                },
                epilogue_dims: [total, m, n],
                result_index: Box::new(move |b, r, c| {
                    let mut i = unflatten(b, &batch);
                    i.extend([r.clone(), c.clone()]);
                    i
                }),
                bias_axis: 0,
            })
        }
        "conv2d" | "conv1d" => {
            let groups = attrs.int("groups") as usize;
            let conv1d = op.name == "conv1d";
            let batched = xs.len() == if conv1d { 3 } else { 4 };
            let n = if batched { xs[0] } else { 1 };
            let x = if batched { &xs[1..] } else { &xs[..] };
            let cin = x[0];
            if groups == cin && !conv1d {
                return None; // depthwise: a direct loop nest
            }
            let (hw, k, s, pad, dil) = if conv1d {
                let one = |name: &str| [1, attrs.int(name) as usize];
                (
                    [1, x[1]],
                    one("k"),
                    one("s"),
                    [0, attrs.int("pad") as usize],
                    one("dilation"),
                )
            } else {
                (
                    [x[1], x[2]],
                    pair(attrs, "k"),
                    pair(attrs, "s"),
                    pair(attrs, "pad"),
                    pair(attrs, "dilation"),
                )
            };
            let cout = ws[0];
            let y = if batched { &ys[1..] } else { &ys[..] };
            let out_hw = if conv1d { [1, y[1]] } else { [y[1], y[2]] };
            let (cin_g, cout_g) = (cin / groups, cout / groups);
            let kk = cin_g * k[0] * k[1];
            let (plane, out_plane) = (hw[0] * hw[1], out_hw[0] * out_hw[1]);
            let pointwise = k == [1, 1] && s == [1, 1] && pad == [0, 0];
            let b = if pointwise {
                OperandKind::Strided {
                    buf_operand: 0,
                    row_stride: plane,
                    col_stride: 1,
                }
            } else {
                OperandKind::Im2col {
                    buf_operand: 0,
                    geometry: ConvGeometry {
                        channels: cin_g,
                        in_hw: hw,
                        k,
                        stride: s,
                        pad,
                        dilation: dil,
                        out_hw,
                    },
                }
            };
            let axes = keep(vec![
                Axis {
                    extent: n,
                    a: 0,
                    b: cin * plane,
                    out: cout * out_plane,
                },
                Axis {
                    extent: groups,
                    a: cout_g * kk,
                    b: cin_g * plane,
                    out: cout_g * out_plane,
                },
            ]);
            let ow = out_hw[1];
            Some(Product {
                m: cout_g,
                n: out_plane,
                k: kk,
                axes,
                a: OperandKind::Strided {
                    buf_operand: 1,
                    row_stride: kk,
                    col_stride: 1,
                },
                b,
                layout: ProductLayout::Dense {
                    row_stride: out_plane,
                    col_stride: 1,
                },
                epilogue_dims: [n * groups, cout_g, out_plane],
                result_index: Box::new(move |b, r, c| {
                    let image = index::div(b.clone(), groups as i64);
                    let oc = index::add(
                        index::mul(index::rem(b.clone(), groups as i64), cout_g as i64),
                        r.clone(),
                    );
                    let mut i = if batched { vec![image] } else { Vec::new() };
                    i.push(oc);
                    if conv1d {
                        i.push(c.clone());
                    } else {
                        i.push(index::div(c.clone(), ow as i64));
                        i.push(index::rem(c.clone(), ow as i64));
                    }
                    i
                }),
                bias_axis: usize::from(batched),
            })
        }
        "conv_transpose2d" => {
            let groups = attrs.int("groups") as usize;
            let batched = xs.len() == 4;
            let n = if batched { xs[0] } else { 1 };
            let x = if batched { &xs[1..] } else { &xs[..] };
            let y = if batched { &ys[1..] } else { &ys[..] };
            let (cin, hw) = (x[0], [x[1], x[2]]);
            let (cout, out_hw) = (y[0], [y[1], y[2]]);
            let k = pair(attrs, "k");
            let (cin_g, cout_g) = (cin / groups, cout / groups);
            let rows = cout_g * k[0] * k[1];
            let (plane, out_plane) = (hw[0] * hw[1], out_hw[0] * out_hw[1]);
            let axes = keep(vec![
                Axis {
                    extent: n,
                    a: 0,
                    b: cin * plane,
                    out: cout * out_plane,
                },
                Axis {
                    extent: groups,
                    a: cin_g * rows,
                    b: cin_g * plane,
                    out: cout_g * out_plane,
                },
            ]);
            let ow = out_hw[1];
            Some(Product {
                m: rows,
                n: plane,
                k: cin_g,
                axes,
                // A(r, ic) = weight[g·cin_g + ic, r] in the [in, out/groups, kh, kw] layout.
                a: OperandKind::Strided {
                    buf_operand: 1,
                    row_stride: 1,
                    col_stride: rows,
                },
                b: OperandKind::Strided {
                    buf_operand: 0,
                    row_stride: plane,
                    col_stride: 1,
                },
                layout: ProductLayout::Col2im {
                    geometry: ConvGeometry {
                        channels: cout_g,
                        in_hw: hw,
                        k,
                        stride: pair(attrs, "s"),
                        pad: pair(attrs, "pad"),
                        dilation: pair(attrs, "dilation"),
                        out_hw,
                    },
                },
                epilogue_dims: [n, cout, out_plane],
                result_index: Box::new(move |b, r, c| {
                    let mut i = if batched { vec![b.clone()] } else { Vec::new() };
                    i.extend([
                        r.clone(),
                        index::div(c.clone(), ow as i64),
                        index::rem(c.clone(), ow as i64),
                    ]);
                    i
                }),
                bias_axis: usize::from(batched),
            })
        }
        _ => None,
    }
}
