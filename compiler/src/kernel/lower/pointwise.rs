//! The value of a Graph IR node at a multi-index, as a Kernel IR expression over its
//! operands' values: elementwise and broadcasting ops, activations, layout ops, pooling,
//! resampling, pixel shuffle, Haar wavelets, convolution (a direct sum over channels and
//! taps), reductions and batch norm. Each rule mirrors the op's reference implementation in `ops/`, using the op
//! table's own geometry (`Pool`, `Resize`, `SliceRange`) so both agree by construction.

use super::{flatten, unflatten, unsupported, LowerError, Lowering, Override};
use crate::ir::{NodeKind, ValueId};
use crate::kernel::index::{self, Cond, Index};
use crate::kernel::{Binary, CmpOp, Expr, ReduceOp, Unary};
use crate::ops::layout::SliceRange;
use crate::ops::pool::{adaptive_bins, Pool, Resize};
use crate::ops::{Attrs, AttrsExt};
use bbc_runtime::kernels::activation::GELU_CLAMP;
use std::f32::consts::FRAC_1_SQRT_2;

fn c(v: f32) -> Expr {
    Expr::Const(v)
}

fn un(op: Unary, x: Expr) -> Expr {
    Expr::unary(op, x)
}

fn max(a: Expr, b: Expr) -> Expr {
    Expr::binary(Binary::Max, a, b)
}

fn min(a: Expr, b: Expr) -> Expr {
    Expr::binary(Binary::Min, a, b)
}

/// Normalises a possibly negative axis (validated by the op's shape rule).
fn axis(a: i64, rank: usize) -> usize {
    if a < 0 {
        (a + rank as i64) as usize
    } else {
        a as usize
    }
}

/// The index into an operand of shape `shape` that broadcasts to the result index `idx`.
fn broadcast(idx: &[Index], shape: &[usize]) -> Vec<Index> {
    let lead = idx.len() - shape.len();
    shape
        .iter()
        .enumerate()
        .map(|(j, &n)| {
            if n == 1 {
                Index::Const(0)
            } else {
                idx[lead + j].clone()
            }
        })
        .collect()
}

impl Lowering<'_> {
    /// The value of node `id` at `idx` (one index per axis of its shape).
    pub fn value_at(&mut self, id: ValueId, idx: &[Index]) -> Result<Expr, LowerError> {
        if let Some(&buf) = self.leaves.get(&id) {
            return Ok(Expr::load(buf, flatten(idx, self.shape(id))));
        }
        match self.overrides.get(&id).cloned() {
            Some(Override::Buffer { buf, bias, perm }) => {
                let at = match &perm {
                    Some(p) => {
                        let permuted: Vec<Index> = p.iter().map(|&a| idx[a].clone()).collect();
                        flatten(&permuted, &self.buffers[buf].shape)
                    }
                    None => flatten(idx, self.shape(id)),
                };
                let mut v = Expr::load(buf, at);
                if let Some((bias, axis)) = bias {
                    v = v + Expr::load(bias, idx[axis].clone());
                }
                return Ok(v);
            }
            Some(Override::Element { index, value }) => {
                // The same element, possibly spelled differently (a size-1 axis read back
                // through a reshape is the constant 0 rather than its loop variable).
                let same = index.len() == idx.len()
                    && index
                        .iter()
                        .zip(idx)
                        .all(|(a, b)| index::sub(a.clone(), b.clone()).range() == (0, 0));
                return if same {
                    Ok(value)
                } else {
                    Err(unsupported(
                        &self.graph.node(id).name,
                        "a value read at an element other than the one being computed",
                    ))
                };
            }
            None => {}
        }
        let key = (id, idx.to_vec());
        if let Some(e) = self.memo.get(&key) {
            return Ok(e.clone());
        }
        let e = self.compute_at(id, idx)?;
        // A value used again at the same index (a fork inside a group) is computed once.
        let e = self.bind(e);
        if self.in_reduce == 0 {
            self.memo.insert(key, e.clone());
        }
        Ok(e)
    }

    fn operand_at(&mut self, id: ValueId, pos: usize, idx: &[Index]) -> Result<Expr, LowerError> {
        let src = self.graph.inputs(id)[pos];
        self.value_at(src, idx)
    }

    /// Operand `pos` of `id` broadcast to `id`'s index `idx`.
    fn broadcast_operand(
        &mut self,
        id: ValueId,
        pos: usize,
        idx: &[Index],
    ) -> Result<Expr, LowerError> {
        let src = self.graph.inputs(id)[pos];
        let i = broadcast(idx, self.shape(src));
        self.value_at(src, &i)
    }

    fn compute_at(&mut self, id: ValueId, idx: &[Index]) -> Result<Expr, LowerError> {
        let node = self.graph.node(id);
        let (op, attrs) = match &node.kind {
            NodeKind::Op { op, attrs } => (*op, attrs.clone()),
            NodeKind::Fused { kind, .. } => {
                return Err(unsupported(
                    &format!("fused {kind}"),
                    "a group nested in a group",
                ))
            }
            // A folded constant inside a group is a table baked into the kernel.
            NodeKind::Const { data } => {
                let (data, shape) = (data.clone(), node.shape.clone());
                let table = self.float_table(&node.name, data);
                return Ok(Expr::Table {
                    table,
                    index: flatten(idx, &shape),
                });
            }
            NodeKind::Input | NodeKind::Param { .. } => {
                return Err(unsupported(
                    &node.name,
                    "a leaf that is not a kernel buffer",
                ))
            }
        };
        let name = op.name;
        let binary = |cx: &mut Self, f: Binary| -> Result<Expr, LowerError> {
            let a = cx.broadcast_operand(id, 0, idx)?;
            let b = cx.broadcast_operand(id, 1, idx)?;
            Ok(Expr::binary(f, a, b))
        };
        let x = |cx: &mut Self| cx.operand_at(id, 0, idx);
        // `x`, bound when the formula uses it more than once.
        let xb = |cx: &mut Self| -> Result<Expr, LowerError> {
            let v = cx.operand_at(id, 0, idx)?;
            Ok(cx.bind(v))
        };
        Ok(match name {
            "add" => binary(self, Binary::Add)?,
            "sub" => binary(self, Binary::Sub)?,
            "mul" => binary(self, Binary::Mul)?,
            "div" => binary(self, Binary::Div)?,
            "maximum" => binary(self, Binary::Max)?,
            "minimum" => binary(self, Binary::Min)?,
            "pow" => binary(self, Binary::Pow)?,
            "neg" => un(Unary::Neg, x(self)?),
            "abs" => un(Unary::Abs, x(self)?),
            "exp" => un(Unary::Exp, x(self)?),
            "log" => un(Unary::Log, x(self)?),
            "sqrt" => un(Unary::Sqrt, x(self)?),
            "rsqrt" => un(Unary::Rsqrt, x(self)?),
            "tanh" => un(Unary::Tanh, x(self)?),
            "sigmoid" => un(Unary::Sigmoid, x(self)?),
            "relu" => max(x(self)?, c(0.0)),
            "relu6" => min(max(x(self)?, c(0.0)), c(6.0)),
            "silu" => {
                let v = xb(self)?;
                v.clone() * un(Unary::Sigmoid, v)
            }
            "gelu" => {
                let v = xb(self)?;
                let twice_phi = if attrs.str("approximate") == "tanh" {
                    let k = (2.0 / std::f64::consts::PI).sqrt() as f32;
                    let inner =
                        c(k) * (v.clone() + c(0.044715) * v.clone() * v.clone() * v.clone());
                    c(1.0) + un(Unary::Tanh, inner)
                } else {
                    c(1.0) + un(Unary::Erf, v.clone() * c(FRAC_1_SQRT_2))
                };
                // Past their clamps the erf and tanh approximations stop an ulp or two short
                // of −1, so `1 + …` would leave x·1e-7 for large negative x (−inf at −inf,
                // where the reference's `−inf·0` is NaN). Below −GELU_CLAMP, |gelu| < 5e-8 in
                // either form: zero there, as the runtime's native GELU does.
                let twice_phi =
                    Expr::select_float(CmpOp::Lt, v.clone(), c(-GELU_CLAMP), c(0.0), twice_phi);
                c(0.5) * v * twice_phi
            }
            "elu" => {
                let v = xb(self)?;
                let alpha = attrs.float("alpha") as f32;
                let neg = c(alpha) * un(Unary::Expm1, v.clone());
                Expr::select_float(CmpOp::Gt, v.clone(), c(0.0), v, neg)
            }
            // The reference's f32 order: x · clamp(x + 3, 0, 6) / 6.
            "hardswish" => {
                let v = xb(self)?;
                v.clone() * min(max(v + c(3.0), c(0.0)), c(6.0)) / c(6.0)
            }
            "clamp" => {
                let mut v = xb(self)?;
                // Like the reference: NaN passes through, min > max gives max.
                if !attrs.is_none("min") {
                    let lo = c(attrs.float("min") as f32);
                    v = Expr::select_float(CmpOp::Lt, v.clone(), lo.clone(), lo, v);
                    v = self.bind(v);
                }
                if !attrs.is_none("max") {
                    let hi = c(attrs.float("max") as f32);
                    v = Expr::select_float(CmpOp::Gt, v.clone(), hi.clone(), hi, v);
                }
                v
            }
            "identity" | "dropout" | "drop_path" => x(self)?,
            "full" => c(attrs.float("value") as f32),
            "coord_grid" => self.coord_grid(&attrs, idx),
            "batch_norm2d" => {
                let ch = idx[1].clone();
                let v = x(self)?;
                let p =
                    |cx: &mut Self, pos: usize| cx.operand_at(id, pos, std::slice::from_ref(&ch));
                let (w, b, mean, var) = (p(self, 1)?, p(self, 2)?, p(self, 3)?, p(self, 4)?);
                let eps = c(attrs.float("eps") as f32);
                // `(v − mean)/√(var + ε)·w + b` as `v·scale + shift`: one multiply-add per
                // element, the per-channel part tabulable when read inside a convolution.
                let scale = w / un(Unary::Sqrt, var + eps);
                let scale = self.bind(scale);
                let shift = b - mean * scale.clone();
                v * scale + shift
            }
            "reshape" | "flatten" => {
                let src = self.graph.inputs(id)[0];
                let flat = flatten(idx, &node.shape);
                let i = unflatten(&flat, self.shape(src));
                self.value_at(src, &i)?
            }
            "permute" => {
                let dims = attrs.ints("dims");
                let mut i = vec![Index::Const(0); idx.len()];
                for (k, &d) in dims.iter().enumerate() {
                    i[axis(d, idx.len())] = idx[k].clone();
                }
                self.operand_at(id, 0, &i)?
            }
            "expand" => self.broadcast_operand(id, 0, idx)?,
            "slice" => {
                let src = self.graph.inputs(id)[0];
                let r =
                    SliceRange::new(&attrs, self.shape(src)).map_err(|e| unsupported(name, e))?;
                let mut i = idx.to_vec();
                i[r.axis] = index::add(
                    index::mul(idx[r.axis].clone(), r.step as i64),
                    r.start as i64,
                );
                self.value_at(src, &i)?
            }
            "concat" => self.concat_at(id, &attrs, idx)?,
            "max_pool2d" | "avg_pool2d" => self.pool_at(id, name, &attrs, idx)?,
            "adaptive_avg_pool2d" => self.adaptive_pool_at(id, idx)?,
            "upsample" => self.upsample_at(id, &attrs, idx)?,
            "pixel_shuffle" => {
                let r = attrs.int("r");
                let n = idx.len();
                let mut i = idx.to_vec();
                let (y, x) = (idx[n - 2].clone(), idx[n - 1].clone());
                let sub = index::add(
                    index::mul(index::rem(y.clone(), r), r),
                    index::rem(x.clone(), r),
                );
                i[n - 3] = index::add(index::mul(idx[n - 3].clone(), r * r), sub);
                i[n - 2] = index::div(y, r);
                i[n - 1] = index::div(x, r);
                self.operand_at(id, 0, &i)?
            }
            "haar_dwt" => self.haar_at(id, idx, true)?,
            "haar_idwt" => self.haar_at(id, idx, false)?,
            "sum" | "mean" | "max" => self.reduce_at(id, name, &attrs, idx)?,
            "conv2d" => self.conv_at(id, &attrs, idx)?,
            "softmax" | "layer_norm" | "layer_norm2d" | "group_norm" => {
                return Err(unsupported(
                    name,
                    "a normalisation is lowered only as the last op of its kernel",
                ))
            }
            other => {
                return Err(unsupported(
                    other,
                    "no Kernel IR lowering for this op inside a loop kernel",
                ))
            }
        })
    }

    /// Whether a conv2d reads one input channel per output channel (depthwise, any multiplier).
    pub fn is_depthwise(&self, id: ValueId) -> bool {
        let node = self.graph.node(id);
        let NodeKind::Op { op, attrs } = &node.kind else {
            return false;
        };
        let x = self.graph.inputs(id)[0];
        op.name == "conv2d" && attrs.int("groups") as usize == self.shape(x)[1]
    }

    fn coord_grid(&mut self, attrs: &Attrs, idx: &[Index]) -> Expr {
        let (h, w) = (attrs.int("h") as usize, attrs.int("w") as usize);
        // The reference's linspace, read back from its own evaluation.
        let grid = (crate::ops::lookup("coord_grid").expect("in the table").eval)(attrs, &[]);
        let data: Vec<f32> = grid.iter().copied().collect();
        let xs = self.float_table("x", data[..w].to_vec());
        let ys = self.float_table("y", (0..h).map(|i| data[h * w + i * w]).collect());
        Expr::select_index(
            Cond::cmp(CmpOp::Eq, idx[0].clone(), 0i64),
            Expr::Table {
                table: xs,
                index: idx[2].clone(),
            },
            Expr::Table {
                table: ys,
                index: idx[1].clone(),
            },
        )
    }

    fn concat_at(&mut self, id: ValueId, attrs: &Attrs, idx: &[Index]) -> Result<Expr, LowerError> {
        let inputs = self.graph.inputs(id);
        let ax = axis(attrs.int("axis"), idx.len());
        let mut parts = Vec::new();
        let mut offset = 0usize;
        for &src in &inputs {
            let n = self.shape(src)[ax];
            let mut i = idx.to_vec();
            // Clamped so that the unselected parts still read inside their buffers.
            i[ax] = index::clamp(index::sub(idx[ax].clone(), offset as i64), 0, n as i64 - 1);
            parts.push((offset + n, self.value_at(src, &i)?));
            offset += n;
        }
        let (_, mut v) = parts.pop().expect("concat has an operand");
        while let Some((end, p)) = parts.pop() {
            v = Expr::select_index(Cond::cmp(CmpOp::Lt, idx[ax].clone(), end as i64), p, v);
        }
        Ok(v)
    }

    /// Max or average over a k×k window, padding masked out (−inf for max, 0 for sums).
    fn pool_at(
        &mut self,
        id: ValueId,
        op: &str,
        attrs: &Attrs,
        idx: &[Index],
    ) -> Result<Expr, LowerError> {
        let src = self.graph.inputs(id)[0];
        let p = Pool::new(op, attrs, self.shape(src)).map_err(|e| unsupported(op, e))?;
        let n = idx.len();
        let taps = [self.var(p.k[0]), self.var(p.k[1])];
        let mut i = idx.to_vec();
        let mut cond = Cond::always();
        for a in 0..2 {
            let pos = index::sub(
                index::add(index::mul(idx[n - 2 + a].clone(), p.s[a] as i64), taps[a]),
                p.pad[a] as i64,
            );
            cond = cond.and(Cond::in_range(&pos, 0, p.hw[a] as i64));
            i[n - 2 + a] = index::clamp(pos, 0, p.hw[a] as i64 - 1);
        }
        let is_max = op == "max_pool2d";
        let fill = if is_max { f32::NEG_INFINITY } else { 0.0 };
        let body = self.in_reduction(|cx| cx.value_at(src, &i))?;
        let body = Expr::select_index(cond, body, c(fill));
        if is_max {
            return Ok(Expr::reduce(ReduceOp::Max, taps.to_vec(), body));
        }
        let include_pad = attrs.flag("count_include_pad");
        let (rows, cols) = p.bins();
        let count =
            |b: &crate::ops::pool::Bin| (if include_pad { b.padded } else { b.range.len() }) as f32;
        let dh = self.float_table("rows", rows.iter().map(count).collect());
        let dw = self.float_table("cols", cols.iter().map(count).collect());
        let divisor = Expr::Table {
            table: dh,
            index: idx[n - 2].clone(),
        } * Expr::Table {
            table: dw,
            index: idx[n - 1].clone(),
        };
        Ok(Expr::reduce(ReduceOp::Sum, taps.to_vec(), body) / divisor)
    }

    fn adaptive_pool_at(&mut self, id: ValueId, idx: &[Index]) -> Result<Expr, LowerError> {
        let src = self.graph.inputs(id)[0];
        let in_shape = self.shape(src).to_vec();
        let out_shape = self.shape(id).to_vec();
        let n = idx.len();
        let mut i = idx.to_vec();
        let mut cond = Cond::always();
        let mut taps = Vec::new();
        let mut counts = Vec::new();
        for a in 0..2 {
            let (len, out) = (in_shape[n - 2 + a], out_shape[n - 2 + a]);
            let bins = adaptive_bins(len, out);
            let widest = bins.iter().map(|b| b.range.len()).max().unwrap_or(1);
            let tap = self.var(widest);
            let starts =
                self.int_table("start", bins.iter().map(|b| b.range.start as i64).collect());
            let lens = self.int_table("len", bins.iter().map(|b| b.range.len() as i64).collect());
            let o = idx[n - 2 + a].clone();
            cond = cond.and(Cond::cmp(CmpOp::Lt, tap, index::lookup(lens, o.clone())));
            i[n - 2 + a] = index::min(
                index::add(index::lookup(starts, o.clone()), tap),
                len as i64 - 1,
            );
            let count =
                self.float_table("count", bins.iter().map(|b| b.range.len() as f32).collect());
            counts.push(Expr::Table {
                table: count,
                index: o,
            });
            taps.push(tap);
        }
        let body = self.in_reduction(|cx| cx.value_at(src, &i))?;
        let sum = Expr::reduce(ReduceOp::Sum, taps, Expr::select_index(cond, body, c(0.0)));
        let [ch, cw]: [Expr; 2] = counts.try_into().expect("two axes");
        Ok(sum / (ch * cw))
    }

    fn upsample_at(
        &mut self,
        id: ValueId,
        attrs: &Attrs,
        idx: &[Index],
    ) -> Result<Expr, LowerError> {
        let src = self.graph.inputs(id)[0];
        let r = Resize::new(attrs, self.shape(src)).map_err(|e| unsupported("upsample", e))?;
        let at = |cx: &mut Self, y: Index, x: Index| {
            let i = [idx[0].clone(), idx[1].clone(), y, x];
            cx.value_at(src, &i)
        };
        if !r.bilinear {
            let [rows, cols] = [0, 1].map(|a| r.nearest(a).into_iter().map(|v| v as i64).collect());
            let (rows, cols) = (self.int_table("rows", rows), self.int_table("cols", cols));
            return at(
                self,
                index::lookup(rows, idx[2].clone()),
                index::lookup(cols, idx[3].clone()),
            );
        }
        // Per axis: source indices i0, i1 and weights λ0, λ1.
        let mut axes = Vec::new();
        for a in 0..2 {
            let taps = r.linear(a);
            let o = idx[2 + a].clone();
            let i0 = self.int_table("src0", taps.iter().map(|t| t.0 as i64).collect());
            let i1 = self.int_table("src1", taps.iter().map(|t| t.1 as i64).collect());
            let l0 = self.float_table("l0", taps.iter().map(|t| t.2).collect());
            let l1 = self.float_table("l1", taps.iter().map(|t| t.3).collect());
            let w = |t| Expr::Table {
                table: t,
                index: o.clone(),
            };
            axes.push((
                index::lookup(i0, o.clone()),
                index::lookup(i1, o.clone()),
                w(l0),
                w(l1),
            ));
        }
        let [(h0, h1, a0, a1), (w0, w1, b0, b1)]: [_; 2] = axes.try_into().expect("two axes");
        // The operation order of PyTorch's separable kernel (and the reference).
        let t0 =
            at(self, h0.clone(), w0.clone())? * b0.clone() + at(self, h0, w1.clone())? * b1.clone();
        let t1 = at(self, h1.clone(), w0)? * b0 + at(self, h1, w1)? * b1;
        Ok(t0 * a0 + t1 * a1)
    }

    /// One Haar butterfly output: `(p ± q ± r ± s) / 2`, signs by band (DWT) or by
    /// position in the 2×2 block (inverse); the butterfly is its own inverse.
    fn haar_at(&mut self, id: ValueId, idx: &[Index], forward: bool) -> Result<Expr, LowerError> {
        const SIGNS: [[f32; 3]; 4] = [
            [1.0, 1.0, 1.0],
            [1.0, -1.0, -1.0],
            [-1.0, 1.0, -1.0],
            [-1.0, -1.0, 1.0],
        ];
        let n = idx.len();
        let (ch, y, x) = (idx[n - 3].clone(), idx[n - 2].clone(), idx[n - 1].clone());
        let lead = &idx[..n - 3];
        let (which, sources): (Index, Vec<[Index; 3]>) = if forward {
            // Result channel 4c + k reads the 2×2 block of channel c.
            let (c, k) = (index::div(ch.clone(), 4), index::rem(ch, 4));
            let (y2, x2) = (index::mul(y, 2), index::mul(x, 2));
            let block = [(0i64, 0i64), (0, 1), (1, 0), (1, 1)].map(|(dy, dx)| {
                [
                    c.clone(),
                    index::add(y2.clone(), dy),
                    index::add(x2.clone(), dx),
                ]
            });
            (k, block.to_vec())
        } else {
            // Position (2i + p, 2j + q) reads band k of channel c at (i, j).
            let r = index::add(
                index::mul(index::rem(y.clone(), 2), 2),
                index::rem(x.clone(), 2),
            );
            let (i, j) = (index::div(y, 2), index::div(x, 2));
            let bands = (0..4i64).map(|k| {
                [
                    index::add(index::mul(ch.clone(), 4), k),
                    i.clone(),
                    j.clone(),
                ]
            });
            (r, bands.collect())
        };
        let mut terms = Vec::new();
        for s in sources {
            let full: Vec<Index> = lead.iter().cloned().chain(s).collect();
            terms.push(self.operand_at(id, 0, &full)?);
        }
        let mut sum = terms[0].clone();
        for (t, term) in terms.into_iter().enumerate().skip(1) {
            let signs = self.float_table(
                &format!("sign{t}"),
                SIGNS.iter().map(|row| row[t - 1]).collect(),
            );
            let sign = Expr::Table {
                table: signs,
                index: which.clone(),
            };
            sum = sum + sign * term;
        }
        Ok(c(0.5) * sum)
    }

    /// `sum`, `mean` or `max` over the attribute's axes; runs of adjacent reduced axes share
    /// one reduction variable.
    fn reduce_at(
        &mut self,
        id: ValueId,
        op: &str,
        attrs: &Attrs,
        idx: &[Index],
    ) -> Result<Expr, LowerError> {
        let src = self.graph.inputs(id)[0];
        let in_shape = self.shape(src).to_vec();
        let rank = in_shape.len();
        let mut reduced = vec![false; rank];
        for &a in attrs.ints("axes") {
            reduced[axis(a, rank)] = true;
        }
        let keepdim = attrs.flag("keepdim");
        let mut i = vec![Index::Const(0); rank];
        let mut vars = Vec::new();
        let mut out_axis = 0;
        let mut a = 0;
        while a < rank {
            if reduced[a] {
                let mut end = a;
                while end < rank && reduced[end] {
                    end += 1;
                }
                let v = self.var(in_shape[a..end].iter().product());
                let parts = unflatten(&Index::Var(v), &in_shape[a..end]);
                i[a..end].clone_from_slice(&parts);
                vars.push(v);
                if keepdim {
                    out_axis += end - a;
                }
                a = end;
            } else {
                i[a] = idx[out_axis].clone();
                out_axis += 1;
                a += 1;
            }
        }
        let count: usize = (0..rank)
            .filter(|&a| reduced[a])
            .map(|a| in_shape[a])
            .product();
        let body = self.in_reduction(|cx| cx.value_at(src, &i))?;
        Ok(match op {
            "max" => Expr::reduce(ReduceOp::Max, vars, body),
            "sum" => Expr::reduce(ReduceOp::Sum, vars, body),
            _ => Expr::reduce(ReduceOp::Sum, vars, body) / c(count as f32),
        })
    }

    /// A conv2d as a direct sum over the input channels of its group and the kernel taps
    /// (zero padding masked): depthwise convolutions, and the convolutions of a group that
    /// reads its input through an op computed while reading (a resize, a per-channel op).
    fn conv_at(&mut self, id: ValueId, attrs: &Attrs, idx: &[Index]) -> Result<Expr, LowerError> {
        let inputs = self.graph.inputs(id);
        let (x, w) = (inputs[0], inputs[1]);
        let xs = self.shape(x).to_vec();
        let ws = self.shape(w).to_vec();
        let pair = |name: &str| {
            let v = attrs.ints(name);
            [v[0], v[1]]
        };
        let (k, s, pad, dil) = (pair("k"), pair("s"), pair("pad"), pair("dilation"));
        // An unbatched input is [C, H, W].
        let lead = idx.len() - 3;
        let groups = attrs.int("groups");
        let cin_g = xs[lead] as i64 / groups;
        let cout_g = ws[0] as i64 / groups;
        let taps = [self.var(k[0] as usize), self.var(k[1] as usize)];
        let channel = (cin_g > 1).then(|| self.var(cin_g as usize));
        let oc = idx[lead].clone();
        // Input channel: the group's first plus the reduction's channel.
        let mut ic = index::mul(index::div(oc.clone(), cout_g), cin_g);
        if let Some(c) = channel {
            ic = index::add(ic, c);
        }
        let mut xi = idx[..lead].to_vec();
        xi.push(ic);
        let mut cond = Cond::always();
        for a in 0..2 {
            let pos = index::sub(
                index::add(
                    index::mul(idx[lead + 1 + a].clone(), s[a]),
                    index::mul(taps[a], dil[a]),
                ),
                pad[a],
            );
            let extent = xs[lead + 1 + a] as i64;
            cond = cond.and(Cond::in_range(&pos, 0, extent));
            xi.push(index::clamp(pos, 0, extent - 1));
        }
        let wi = [
            oc.clone(),
            channel.map_or(Index::Const(0), Index::Var),
            Index::Var(taps[0]),
            Index::Var(taps[1]),
        ];
        let (xv, wv) = self.in_reduction(|cx| -> Result<_, LowerError> {
            Ok((cx.value_at(x, &xi)?, cx.value_at(w, &wi)?))
        })?;
        // Channels innermost: the longest loop, with the tap's row clamp and bounds outside it.
        let vars = taps.into_iter().chain(channel).collect();
        let sum = Expr::reduce(
            ReduceOp::Sum,
            vars,
            Expr::select_index(cond, xv, c(0.0)) * wv,
        );
        Ok(if attrs.flag("bias") {
            self.operand_at(id, 2, &[oc])? + sum
        } else {
            sum
        })
    }
}
