//! Contraction epilogues the runtime computes natively: an epilogue whose Kernel IR is
//! exactly `out = act((out + bias) + residual)` (bias per row, per column or none; a
//! residual, read where the product is, or none; `act` one of [`Activation`]) runs on the
//! runtime's 8-lane kernel
//! ([`bbc_runtime::kernels::activation`]) instead of generated code, which Cranelift limits
//! to 4 lanes on x86-64.
//!
//! Recognition is structural. Each activation's pattern is what the lowering itself makes
//! of the op applied to one value (a one-op graph lowered once, so the op table and the
//! lowering stay the only definitions); an epilogue matches when its stored value, `let`s
//! inlined, is that pattern with every occurrence of the value replaced by the same
//! `out[L]`, `out[L] + bias[B]`, `out[L] + res[L]` or `(out[L] + bias[B]) + res[L]` (sums
//! in either order), the store goes to `out[L]`, `L` is affine in the epilogue's (batch,
//! row, column) with unit column stride, `B` is the row or the column, and `res[L]` reads
//! another buffer at `L`'s offset and strides. Anything else keeps its generated epilogue.

use crate::ir::parse_text;
use crate::kernel::index::{self, Index, Var};
use crate::kernel::{lower_node, Binary, Body, Contraction, Expr, Kernel, Pred, ScalarId, Stmt};
use bbc_runtime::exec::{NativeEpilogue, TileBias};
use bbc_runtime::kernels::activation::Activation;
use std::collections::HashMap;
use std::sync::OnceLock;

/// The native form of `c`'s epilogue (a contraction of `kernel`), if it has one, over the
/// product as the kernel presents it: the epilogue's rows and columns swapped when
/// `transposed` (a product stored column-major), so the native kernel's rows are contiguous.
pub fn native_epilogue(
    kernel: &Kernel,
    c: &Contraction,
    transposed: bool,
) -> Option<NativeEpilogue> {
    let e = c.epilogue.as_ref()?;
    let (Stmt::Store { buf, index, value }, lets) = e.body.split_last()? else {
        return None;
    };
    if *buf != c.out {
        return None;
    }
    let value = inline_lets(lets, value)?;
    let vars = if transposed {
        [e.batch, e.col, e.row]
    } else {
        [e.batch, e.row, e.col]
    };
    let (offset, [batch_stride, row_stride, col_stride]) = affine(index, &vars)?;
    let extents = vars.map(|v| v.extent);
    if col_stride != 1 && vars[2].extent > 1 {
        return None;
    }
    // The activation whose pattern leaves the product, alone or plus a bias, a residual or
    // both, in its holes (the identity's pattern, a hole alone, matches any value).
    let here = (offset, [batch_stride, row_stride, col_stride]);
    let (activation, terms) = templates().iter().find_map(|(act, pattern)| {
        let terms = sum_terms(unify_hole(pattern, &value)?, c.out, &vars, here)?;
        Some((*act, terms))
    })?;
    let bias = match terms.bias {
        None => None,
        Some((buf, index)) => {
            kernel.buffers.get(buf)?;
            Some(TileBias {
                slot: buf,
                per_column: bias_per_column(&index, &vars)?,
            })
        }
    };
    let stride = |k: i64| usize::try_from(k).ok();
    let native = NativeEpilogue {
        activation,
        bias,
        residual: terms.residual,
        offset: stride(offset)?,
        batch_stride: stride(batch_stride)?,
        row_stride: stride(row_stride)?,
    };
    // Inside its buffers, one element per epilogue element, as the executor will check.
    let len = |slot: Option<usize>| slot.map_or(usize::MAX, |b| kernel.buffers[b].len());
    let (bias_len, residual_len) = (len(native.bias.map(|b| b.slot)), len(native.residual));
    let out_len = kernel.buffers.get(c.out)?.len();
    native
        .fits(extents, out_len, bias_len, residual_len)
        .then_some(native)
}

/// Whether a read at `index` is a bias per column (`Some(true)`) or per row (`Some(false)`)
/// of the epilogue over `vars` (batch, row, column), or neither.
fn bias_per_column(index: &Index, vars: &[Var; 3]) -> Option<bool> {
    let (constant, k) = affine(index, vars)?;
    let per_row = k == [0, 1, 0] || (k == [0, 0, 0] && vars[1].extent == 1);
    let per_column = k == [0, 0, 1] || (k == [0, 0, 0] && vars[2].extent == 1);
    (constant == 0 && (per_row || per_column)).then_some(!per_row)
}

/// What an epilogue adds to its product before the activation.
struct Terms {
    /// A bias: a buffer read per row or per column.
    bias: Option<(usize, Index)>,
    /// A buffer read where the product is (same offset and strides): a residual.
    residual: Option<usize>,
}

/// `value` as `product`, `product + bias`, `(product + bias) + residual` or
/// `product + residual`, either operand order in each sum (a float add commutes), where the
/// product is `out` read at `here` (an affine form over `vars`), a bias another buffer read
/// per row or per column and a residual another buffer read at `here`: the terms besides
/// the product, or `None` for any other form.
fn sum_terms(value: Expr, out: usize, vars: &[Var; 3], here: (i64, [i64; 3])) -> Option<Terms> {
    let at_here = |index: &Index| affine(index, vars) == Some(here);
    let is_product =
        |e: &Expr| matches!(e, Expr::Load { buf, index } if *buf == out && at_here(index));
    let other_load = |e: &Expr| match e {
        Expr::Load { buf, index } if *buf != out => Some((*buf, index.clone())),
        _ => None,
    };
    // `product + x` or `x + product`: the other operand.
    let beside_product = |e: &Expr| match e {
        Expr::Binary(Binary::Add, a, b) if is_product(a) => Some((**b).clone()),
        Expr::Binary(Binary::Add, a, b) if is_product(b) => Some((**a).clone()),
        _ => None,
    };
    if is_product(&value) {
        return Some(Terms {
            bias: None,
            residual: None,
        });
    }
    let is_bias = |index: &Index| bias_per_column(index, vars).is_some();
    if let Some(other) = beside_product(&value) {
        // A bias where the read is one (on a single row both readings agree), else a
        // residual read at the product's own place.
        let (buf, index) = other_load(&other)?;
        return if is_bias(&index) {
            Some(Terms {
                bias: Some((buf, index)),
                residual: None,
            })
        } else {
            at_here(&index).then_some(Terms {
                bias: None,
                residual: Some(buf),
            })
        };
    }
    // `(product + bias) + residual`, either order at either level.
    let Expr::Binary(Binary::Add, a, b) = &value else {
        return None;
    };
    [(a, b), (b, a)].into_iter().find_map(|(inner, shortcut)| {
        let (residual, at) = other_load(shortcut)?;
        let (bias, index) = other_load(&beside_product(inner)?)?;
        (at_here(&at) && is_bias(&index)).then_some(Terms {
            bias: Some((bias, index)),
            residual: Some(residual),
        })
    })
}

/// `index` as `constant + Σ coefficient·var` over `vars` (the coefficient of a variable of
/// extent 1 reported as 0: it only ever multiplies 0), or `None` if it is not affine in
/// them alone.
fn affine(index: &Index, vars: &[Var; 3]) -> Option<(i64, [i64; 3])> {
    let mut k = [0i64; 3];
    for (slot, v) in k.iter_mut().zip(vars) {
        *slot = index.affine_coefficient(*v)?;
    }
    let constant = index.eval(&|_| 0, &|_, _| 0);
    let rebuilt = vars
        .iter()
        .zip(k)
        .fold(Index::Const(constant), |acc, (v, c)| {
            index::add(acc, index::mul(Index::Var(*v), c))
        });
    if index::sub(index.clone(), rebuilt) != Index::Const(0) {
        return None;
    }
    for (c, v) in k.iter_mut().zip(vars) {
        if v.extent == 1 {
            *c = 0;
        }
    }
    Some((constant, k))
}

/// The activation a loop kernel applies element by element to the buffer just before its
/// output, if that is all it does (the rest of a depthwise convolution's group, the
/// product being that buffer): one store, `out[L] = act(x[L])` with the same index `L`,
/// which runs over the loop nest in row-major order and so visits every element of an
/// output as long as `x` once.
pub fn elementwise_activation(kernel: &Kernel) -> Option<Activation> {
    let Body::Loops { grid, body, .. } = &kernel.body else {
        return None;
    };
    let (out, source) = (kernel.output(), kernel.output().checked_sub(1)?);
    let numel = |b: usize| {
        kernel
            .buffers
            .get(b)
            .map(|b| b.shape.iter().product::<usize>())
    };
    let mut vars = vec![*grid];
    let mut stmts = body.as_slice();
    while let [Stmt::Loop { var, body, .. }] = stmts {
        vars.push(*var);
        stmts = body;
    }
    let (Stmt::Store { buf, index, value }, lets) = stmts.split_last()? else {
        return None;
    };
    let total: usize = vars.iter().map(|v| v.extent).product();
    if *buf != out || numel(out)? != total || numel(source)? != total {
        return None;
    }
    // Row-major over the nest: the last variable has stride 1.
    let mut stride = 1;
    let mut row_major = Index::Const(0);
    for v in vars.iter().rev() {
        row_major = index::add(row_major, index::mul(Index::Var(*v), stride));
        stride *= v.extent as i64;
    }
    if index::sub(index.clone(), row_major) != Index::Const(0) {
        return None;
    }
    let value = inline_lets(lets, value)?;
    templates()
        .iter()
        .find_map(|(act, pattern)| match unify_hole(pattern, &value)? {
            Expr::Load { buf, index: at } if buf == source && at == *index => Some(*act),
            _ => None,
        })
}

/// `value` with every `let`-bound scalar replaced by its definition, or `None` if a
/// statement is not a `let` or the value uses something other than loads, constants,
/// arithmetic and selects on float comparisons (GELU's zero tail).
fn inline_lets(lets: &[Stmt], value: &Expr) -> Option<Expr> {
    let mut bound: HashMap<ScalarId, Expr> = HashMap::new();
    for s in lets {
        let Stmt::Let { id, value } = s else {
            return None;
        };
        let v = substitute(value, &bound)?;
        bound.insert(*id, v);
    }
    substitute(value, &bound)
}

fn substitute(e: &Expr, bound: &HashMap<ScalarId, Expr>) -> Option<Expr> {
    Some(match e {
        Expr::Const(_) | Expr::Load { .. } => e.clone(),
        Expr::Scalar(id) => bound.get(id)?.clone(),
        Expr::Unary(op, x) => Expr::unary(*op, substitute(x, bound)?),
        Expr::Binary(op, a, b) => Expr::binary(*op, substitute(a, bound)?, substitute(b, bound)?),
        Expr::Select {
            pred,
            then,
            otherwise,
        } => {
            let Pred::Float(op, a, b) = &**pred else {
                return None;
            };
            Expr::select_float(
                *op,
                substitute(a, bound)?,
                substitute(b, bound)?,
                substitute(then, bound)?,
                substitute(otherwise, bound)?,
            )
        }
        Expr::Table { .. } | Expr::Scratch { .. } | Expr::Reduce { .. } => return None,
    })
}

/// The expression every hole of `pattern` (a load of buffer 0) stands for in `e`, if `e` is
/// `pattern` with each hole replaced by that same expression.
fn unify_hole(pattern: &Expr, e: &Expr) -> Option<Expr> {
    fn go(p: &Expr, e: &Expr, hole: &mut Option<Expr>) -> bool {
        match (p, e) {
            (Expr::Load { buf: 0, .. }, _) => match hole {
                Some(h) => h == e,
                None => {
                    *hole = Some(e.clone());
                    true
                }
            },
            (Expr::Const(a), Expr::Const(b)) => a.to_bits() == b.to_bits(),
            (Expr::Unary(o, a), Expr::Unary(p2, b)) => o == p2 && go(a, b, hole),
            (Expr::Binary(o, a1, b1), Expr::Binary(p2, a2, b2)) => {
                o == p2 && go(a1, a2, hole) && go(b1, b2, hole)
            }
            (
                Expr::Select {
                    pred: p1,
                    then: t1,
                    otherwise: o1,
                },
                Expr::Select {
                    pred: p2,
                    then: t2,
                    otherwise: o2,
                },
            ) => match (&**p1, &**p2) {
                (Pred::Float(c1, a1, b1), Pred::Float(c2, a2, b2)) => {
                    c1 == c2
                        && go(a1, a2, hole)
                        && go(b1, b2, hole)
                        && go(t1, t2, hole)
                        && go(o1, o2, hole)
                }
                _ => false,
            },
            _ => false,
        }
    }
    let mut hole = None;
    if go(pattern, e, &mut hole) {
        hole
    } else {
        None
    }
}

/// Each activation's pattern: the lowering of the op on one input (its loads are the
/// holes). Identity's is the hole alone. An activation whose graph does not lower (which
/// would be a bug in the lowering) just never matches.
fn templates() -> &'static [(Activation, Expr)] {
    static TEMPLATES: OnceLock<Vec<(Activation, Expr)>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let hole = Expr::load(0, Index::Const(0));
        Activation::ALL
            .iter()
            .filter_map(|&act| {
                let op = match act {
                    Activation::Identity => return Some((act, hole.clone())),
                    Activation::Relu => "relu(%x)",
                    Activation::Relu6 => "relu6(%x)",
                    Activation::Sigmoid => "sigmoid(%x)",
                    Activation::Silu => "silu(%x)",
                    Activation::Gelu => "gelu(%x) {approximate=\"none\"}",
                };
                let text = format!(
                    "graph t {{\n  input %x: f32[8]\n  %y = {op}: f32[8]\n  output %y = %y\n}}\n"
                );
                let graph = parse_text(&text).ok()?;
                let kernel = lower_node(&graph, graph.find("y")?).ok()?;
                let Body::Loops { body, .. } = &kernel.body else {
                    return None;
                };
                Some((act, stored_value(body)?))
            })
            .collect()
    })
}

/// The value of the one store in a loop nest, `let`s inlined.
fn stored_value(body: &[Stmt]) -> Option<Expr> {
    match body {
        [Stmt::Loop { body, .. }] => stored_value(body),
        [lets @ .., Stmt::Store { value, .. }] => inline_lets(lets, value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Graph;
    use crate::passes;

    /// The kernel of the (only) contraction group or op of `body` after -O2.
    fn contraction(body: &str) -> Kernel {
        let text = format!("graph t {{\n{body}\n}}\n");
        let mut g: Graph = parse_text(&text).expect("parses");
        passes::run(&mut g, &passes::pipeline(2), &passes::Options::default()).expect("optimises");
        let id = g
            .topo_order()
            .into_iter()
            .find(|&n| lower_node(&g, n).is_ok_and(|k| matches!(k.body, Body::Contraction(_))))
            .expect("a contraction");
        lower_node(&g, id).expect("lowers")
    }

    fn native(body: &str) -> Option<NativeEpilogue> {
        let k = contraction(body);
        let Body::Contraction(c) = &k.body else {
            unreachable!()
        };
        native_epilogue(&k, c, false)
    }

    const CONV: &str = "  input %x: f32[1, 4, 5, 6]
  param %w: f32[8, 4, 1, 1] = uniform(0.5)
  param %b: f32[8] = uniform(0.5)
  %c = conv2d(%x, %w, %b) {bias=true, dilation=[1, 1], groups=1, k=[1, 1], out=8, pad=[0, 0], s=[1, 1]}: f32[1, 8, 5, 6]";

    /// The kernel of `%y` in a graph of `body`, lowered alone.
    fn lowered(body: &str) -> Kernel {
        let g: Graph = parse_text(&format!("graph t {{\n{body}\n}}\n")).expect("parses");
        lower_node(&g, g.find("y").expect("a %y")).expect("lowers")
    }

    #[test]
    fn elementwise_activations_of_the_last_input() {
        for (op, act) in [
            ("silu(%p)", Activation::Silu),
            ("relu6(%p)", Activation::Relu6),
            ("gelu(%p) {approximate=\"none\"}", Activation::Gelu),
        ] {
            let k = lowered(&format!(
                "  input %p: f32[1, 4, 5, 6]\n  %y = {op}: f32[1, 4, 5, 6]\n  output %y = %y"
            ));
            assert_eq!(elementwise_activation(&k), Some(act), "{op}");
        }
        // A residual, a product of two reads, a transpose.
        for body in [
            "  input %p: f32[1, 4, 5, 6]\n  input %q: f32[1, 4, 5, 6]\n  %y = add(%p, %q): f32[1, 4, 5, 6]",
            "  input %p: f32[1, 4, 5, 6]\n  %y = mul(%p, %p): f32[1, 4, 5, 6]",
            "  input %p: f32[1, 4, 5, 6]\n  %y = permute(%p) {dims=[0, 1, 3, 2]}: f32[1, 4, 6, 5]",
        ] {
            let k = lowered(&format!("{body}\n  output %y = %y"));
            assert_eq!(elementwise_activation(&k), None, "{body}");
        }
    }

    #[test]
    fn every_activation_has_a_template() {
        let found: Vec<Activation> = templates().iter().map(|(a, _)| *a).collect();
        assert_eq!(found, Activation::ALL);
    }

    #[test]
    fn convolution_bias_and_activation_per_row() {
        for (op, act) in [
            ("silu(%c)", Activation::Silu),
            ("relu(%c)", Activation::Relu),
            ("relu6(%c)", Activation::Relu6),
            ("sigmoid(%c)", Activation::Sigmoid),
            ("gelu(%c) {approximate=\"none\"}", Activation::Gelu),
        ] {
            let got = native(&format!(
                "{CONV}\n  %y = {op}: f32[1, 8, 5, 6]\n  output %y = %y"
            ));
            assert_eq!(
                got,
                Some(NativeEpilogue {
                    activation: act,
                    bias: Some(TileBias {
                        slot: 2,
                        per_column: false
                    }),
                    residual: None,
                    offset: 0,
                    batch_stride: 0,
                    row_stride: 30,
                }),
                "{op}"
            );
        }
        // The bias alone.
        let got = native(&format!("{CONV}\n  output %y = %c")).expect("matches");
        assert_eq!(got.activation, Activation::Identity);
    }

    /// A residual add (ResNet's shortcut), in either operand order, with or without an
    /// activation after it: the residual is the buffer read where the product is.
    #[test]
    fn residual_adds_run_natively() {
        for (tail, act) in [
            (
                "%a = add(%c, %r): f32[1, 8, 5, 6]\n  %y = relu(%a): f32[1, 8, 5, 6]",
                Activation::Relu,
            ),
            (
                "%a = add(%r, %c): f32[1, 8, 5, 6]\n  %y = relu(%a): f32[1, 8, 5, 6]",
                Activation::Relu,
            ),
            ("%y = add(%r, %c): f32[1, 8, 5, 6]", Activation::Identity),
        ] {
            let body = format!("{CONV}\n  input %r: f32[1, 8, 5, 6]\n  {tail}\n  output %y = %y");
            let k = contraction(&body);
            let got = native(&body).unwrap_or_else(|| panic!("{tail}: not native"));
            assert_eq!(got.activation, act, "{tail}");
            assert_eq!(
                got.bias.map(|b| (b.slot, b.per_column)),
                Some((2, false)),
                "{tail}"
            );
            let slot = got.residual.expect("a residual");
            assert_eq!(k.buffers[slot].shape, vec![1, 8, 5, 6], "{tail}");
            assert_eq!((got.offset, got.row_stride), (0, 30), "{tail}");
        }
    }

    #[test]
    fn linear_bias_per_column() {
        let got = native(
            "  input %x: f32[2, 3, 5]
  param %w: f32[7, 5] = uniform(0.5)
  param %b: f32[7] = uniform(0.5)
  %l = linear(%x, %w, %b) {bias=true, out=7}: f32[2, 3, 7]
  %y = gelu(%l) {approximate=\"none\"}: f32[2, 3, 7]
  output %y = %y",
        )
        .expect("matches");
        assert_eq!(got.activation, Activation::Gelu);
        assert_eq!(got.bias.map(|b| b.per_column), Some(true));
        assert_eq!(got.row_stride, 7);
    }

    #[test]
    fn other_epilogues_keep_generated_code() {
        for tail in [
            // The tanh form of GELU, a residual read elsewhere (transposed), two residuals, a
            // channel scale computed per inference, an activation of another.
            "  %y = gelu(%c) {approximate=\"tanh\"}: f32[1, 8, 5, 6]\n  output %y = %y",
            "  input %q: f32[1, 8, 6, 5]\n  %t = permute(%q) {dims=[0, 1, 3, 2]}: f32[1, 8, 5, 6]\n  %y = add(%c, %t): f32[1, 8, 5, 6]\n  output %y = %y",
            "  input %r: f32[1, 8, 5, 6]\n  input %s: f32[1, 8, 5, 6]\n  %a = add(%c, %r): f32[1, 8, 5, 6]\n  %y = add(%a, %s): f32[1, 8, 5, 6]\n  output %y = %y",
            "  input %g: f32[8, 1, 1]\n  %y = mul(%c, %g): f32[1, 8, 5, 6]\n  output %y = %y",
            "  %t = tanh(%c): f32[1, 8, 5, 6]\n  %y = silu(%t): f32[1, 8, 5, 6]\n  output %y = %y",
        ] {
            assert_eq!(native(&format!("{CONV}\n{tail}")), None, "{tail}");
        }
    }

    /// ConvNeXt's fc2: a linear layer over channels-last pixels stored back channels-first
    /// (column-major), scaled per channel and added to the NCHW shortcut. Over the product as
    /// the kernel presents it (`Cᵀ`, channels by pixels) that is a bias per row and a
    /// residual along contiguous rows; over `C` itself there is no native form.
    #[test]
    fn transposed_products_run_natively_over_the_presented_tile() {
        let body = "  input %x: f32[1, 5, 6, 8]
  input %r: f32[1, 4, 5, 6]
  param %w: f32[4, 8] = uniform(0.5)
  param %b: f32[4] = uniform(0.5)
  param %gamma: f32[4] = uniform(0.5)
  %c = linear(%x, %w, %b) {bias=true, out=4}: f32[1, 5, 6, 4]
  %s = mul(%c, %gamma): f32[1, 5, 6, 4]
  %p = permute(%s) {dims=[0, 3, 1, 2]}: f32[1, 4, 5, 6]
  %y = add(%r, %p): f32[1, 4, 5, 6]
  output %y = %y";
        let k = contraction(body);
        let Body::Contraction(c) = &k.body else {
            unreachable!()
        };
        assert_eq!(native_epilogue(&k, c, false), None);
        let got = native_epilogue(&k, c, true).expect("native over the transposed tile");
        assert_eq!(got.activation, Activation::Identity);
        assert_eq!(got.bias.map(|b| b.per_column), Some(false));
        let slot = got.residual.expect("a residual");
        assert_eq!(k.buffers[slot].shape, vec![1, 4, 5, 6]);
        assert_eq!((got.offset, got.row_stride), (0, 30));
    }
}
