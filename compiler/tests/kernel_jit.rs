//! The Cranelift CPU backend against the reference implementations: every lowered op class
//! and every fusion group kind is lowered, JIT'd (normal and bounds-checked) and run on
//! random inputs with awkward sizes (odd, not multiples of four, size-1 axes); property
//! tests over random elementwise groups and random attention shapes; FFF groups of every
//! form the pass makes; the measured error of the transcendental approximations;
//! out-of-bounds detection; single-thread throughput of an elementwise chain, an attention
//! and an FFF group.

mod kernel_common;

use bbc_compiler::codegen::cpu::{compile, host_has_fma, Options, RunError};
use bbc_compiler::kernel::{
    Access, Body, Buffer, Expr, Index, Kernel, LowerError, Stmt, Unary, Var,
};
use kernel_common::{check_graph, optimize, parse, Report};
use proptest::prelude::*;

/// A graph of one input `%x` with the given shape, then `body` lines, output `%y`.
fn graph(x: &[usize], body: &str) -> String {
    let dims = x
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    format!("graph t {{\n  input %x: f32[{dims}]\n{body}\n  output %out = %y\n}}\n")
}

fn check(text: &str, optimized: bool, tol: f32) -> Report {
    let mut g = parse(text);
    if optimized {
        optimize(&mut g);
    }
    let report = check_graph(&g, 7, tol);
    assert!(
        report.unsupported.is_empty(),
        "unsupported: {:?}",
        report.unsupported
    );
    assert!(!report.checked.is_empty());
    report
}

const TOL: f32 = 2e-5;

#[test]
fn activations_and_unary_math() {
    let acts = [
        "relu(%x)",
        "relu6(%x)",
        "gelu(%x) {approximate=\"none\"}",
        "gelu(%x) {approximate=\"tanh\"}",
        "silu(%x)",
        "sigmoid(%x)",
        "tanh(%x)",
        "elu(%x) {alpha=1.5}",
        "hardswish(%x)",
        "clamp(%x) {max=0.5, min=-0.25}",
        "clamp(%x) {max=none, min=0.1}",
        "neg(%x)",
        "exp(%x)",
        "abs(%x)",
        "identity(%x)",
        "dropout(%x) {p=0.5}",
    ];
    for (i, act) in acts.iter().enumerate() {
        let shape = [[2, 3, 5, 7], [1, 1, 1, 3], [3, 1, 9, 1]][i % 3];
        let dims = shape.map(|d| d.to_string()).join(", ");
        let text = graph(&shape, &format!("  %y = {act}: f32[{dims}]"));
        check(&text, false, TOL);
    }
    // Positive inputs for log, sqrt and rsqrt.
    for op in ["log", "sqrt", "rsqrt"] {
        let text = graph(
            &[5, 3],
            &format!("  %a = abs(%x): f32[5, 3]\n  %p = add(%a, %a): f32[5, 3]\n  %y = {op}(%p): f32[5, 3]"),
        );
        check(&text, false, TOL);
    }
}

#[test]
fn broadcasting_binary_ops() {
    for op in ["add", "sub", "mul", "div", "maximum", "minimum", "pow"] {
        let text = format!(
            "graph t {{\n  input %x: f32[2, 3, 5, 7]\n  input %b: f32[3, 1, 7]\n  input %s: f32[]\n  %a = abs(%x): f32[2, 3, 5, 7]\n  %t = {op}(%a, %b): f32[2, 3, 5, 7]\n  %y = {op}(%s, %t): f32[2, 3, 5, 7]\n  output %out = %y\n}}\n"
        );
        check(&text, false, if op == "pow" { 1e-4 } else { TOL });
    }
}

#[test]
fn layout_ops() {
    let cases = [
        (
            vec![2, 3, 5],
            "%y = permute(%x) {dims=[2, 0, 1]}: f32[5, 2, 3]",
        ),
        (vec![2, 3, 5], "%y = reshape(%x) {shape=[5, -1]}: f32[5, 6]"),
        (
            vec![2, 3, 5],
            "%y = flatten(%x) {end=-1, start=1}: f32[2, 15]",
        ),
        (
            vec![3, 1, 5],
            "%y = expand(%x) {shape=[2, 3, 4, 5]}: f32[2, 3, 4, 5]",
        ),
        (
            vec![2, 9, 5],
            "%y = slice(%x) {axis=1, end=8, start=1, step=3}: f32[2, 3, 5]",
        ),
        (
            vec![2, 9, 5],
            "%y = slice(%x) {axis=-1, end=5, start=-3, step=1}: f32[2, 9, 3]",
        ),
        (
            vec![1, 8, 3, 5],
            "%y = pixel_shuffle(%x) {r=2}: f32[1, 2, 6, 10]",
        ),
        (vec![2, 3, 6, 10], "%y = haar_dwt(%x): f32[2, 12, 3, 5]"),
        (vec![1, 8, 3, 5], "%y = haar_idwt(%x): f32[1, 2, 6, 10]"),
    ];
    for (shape, line) in cases {
        check(&graph(&shape, &format!("  {line}")), false, TOL);
    }
    let concat = "graph t {\n  input %a: f32[2, 3, 5]\n  input %b: f32[2, 1, 5]\n  input %c: f32[2, 2, 5]\n  %y = concat(%a, %b, %c) {axis=1}: f32[2, 6, 5]\n  %z = concat(%a, %a) {axis=-1}: f32[2, 3, 10]\n  output %out = %y\n  output %out2 = %z\n}\n";
    check(concat, false, TOL);
    let sources = "graph t {\n  %g = coord_grid() {h=3, hi=2.0, lo=-1.0, w=5}: f32[2, 3, 5]\n  %f = full() {shape=[2, 3, 5], value=1.5}: f32[2, 3, 5]\n  %y = add(%g, %f): f32[2, 3, 5]\n  output %out = %y\n}\n";
    check(sources, false, TOL);
}

#[test]
fn reductions_and_norms() {
    let cases = [
        (
            vec![2, 3, 5, 7],
            "%y = sum(%x) {axes=[2, 3], keepdim=true}: f32[2, 3, 1, 1]",
        ),
        (
            vec![2, 3, 5, 7],
            "%y = mean(%x) {axes=[1], keepdim=false}: f32[2, 5, 7]",
        ),
        (
            vec![2, 3, 5, 7],
            "%y = max(%x) {axes=[0, 3], keepdim=false}: f32[3, 5]",
        ),
        (
            vec![3, 37],
            "%y = mean(%x) {axes=[-1], keepdim=false}: f32[3]",
        ),
        (vec![2, 5, 13], "%y = softmax(%x) {axis=-1}: f32[2, 5, 13]"),
        (
            vec![2, 5, 3, 7],
            "%y = softmax(%x) {axis=1}: f32[2, 5, 3, 7]",
        ),
        (vec![7, 1], "%y = softmax(%x) {axis=0}: f32[7, 1]"),
    ];
    for (shape, line) in cases {
        check(&graph(&shape, &format!("  {line}")), false, TOL);
    }
    let norms = "graph t {
  input %x: f32[2, 6, 5, 3]
  param %ln.weight: f32[3] = ones
  param %ln.bias: f32[3] = zeros
  %ln = layer_norm(%x, %ln.weight, %ln.bias) {affine=true, eps=1e-5}: f32[2, 6, 5, 3]
  %ln0 = layer_norm(%x) {affine=false, eps=1e-5}: f32[2, 6, 5, 3]
  param %l2.weight: f32[6] = ones
  param %l2.bias: f32[6] = zeros
  %l2 = layer_norm2d(%x, %l2.weight, %l2.bias) {affine=true, eps=1e-6}: f32[2, 6, 5, 3]
  param %gn.weight: f32[6] = ones
  param %gn.bias: f32[6] = zeros
  %gn = group_norm(%x, %gn.weight, %gn.bias) {eps=1e-5, groups=3}: f32[2, 6, 5, 3]
  param %bn.weight: f32[6] = ones
  param %bn.bias: f32[6] = zeros
  param %bn.running_mean: f32[6] = zeros
  param %bn.running_var: f32[6] = ones
  %a = abs(%bn.running_var): f32[6]
  %bn = batch_norm2d(%x, %bn.weight, %bn.bias, %bn.running_mean, %a) {eps=1e-5}: f32[2, 6, 5, 3]
  output %o1 = %ln
  output %o2 = %ln0
  output %o3 = %l2
  output %o4 = %gn
  output %o5 = %bn
}
";
    // Statistics in f32 against f64: normalised values are O(1), so 1e-4 relative.
    check(norms, false, 1e-4);
}

#[test]
fn pooling_and_resampling() {
    let cases = [
        (vec![1, 3, 9, 7], "%y = max_pool2d(%x) {ceil_mode=false, k=[3, 3], pad=[1, 1], s=[2, 2]}: f32[1, 3, 5, 4]"),
        (vec![1, 3, 9, 7], "%y = max_pool2d(%x) {ceil_mode=true, k=[2, 2], pad=[0, 0], s=none}: f32[1, 3, 5, 4]"),
        (vec![2, 9, 7], "%y = avg_pool2d(%x) {ceil_mode=true, count_include_pad=true, k=[3, 2], pad=[1, 1], s=[2, 2]}: f32[2, 5, 4]"),
        (vec![1, 2, 9, 7], "%y = avg_pool2d(%x) {ceil_mode=false, count_include_pad=false, k=[3, 3], pad=[1, 1], s=[2, 2]}: f32[1, 2, 5, 4]"),
        (vec![1, 3, 9, 7], "%y = adaptive_avg_pool2d(%x) {size=[4, 3]}: f32[1, 3, 4, 3]"),
        (vec![1, 3, 9, 7], "%y = adaptive_avg_pool2d(%x) {size=[1, 1]}: f32[1, 3, 1, 1]"),
        (vec![1, 2, 3, 5], "%y = upsample(%x) {align_corners=false, mode=\"nearest\", scale=2, size=none}: f32[1, 2, 6, 10]"),
        (vec![1, 2, 3, 5], "%y = upsample(%x) {align_corners=false, mode=\"nearest\", scale=none, size=[7, 4]}: f32[1, 2, 7, 4]"),
        (vec![1, 2, 3, 5], "%y = upsample(%x) {align_corners=false, mode=\"bilinear\", scale=none, size=[7, 9]}: f32[1, 2, 7, 9]"),
        (vec![1, 2, 3, 5], "%y = upsample(%x) {align_corners=true, mode=\"bilinear\", scale=2, size=none}: f32[1, 2, 6, 10]"),
    ];
    for (shape, line) in cases {
        check(&graph(&shape, &format!("  {line}")), false, TOL);
    }
}

#[test]
fn convolutions_and_contractions() {
    let text = "graph t {
  input %x: f32[2, 6, 7, 5]
  param %dw.weight: f32[6, 1, 3, 3] = uniform(0.3)
  param %dw.bias: f32[6] = uniform(0.3)
  %dw = conv2d(%x, %dw.weight, %dw.bias) {bias=true, dilation=[1, 1], groups=6, k=[3, 3], out=6, pad=[1, 1], s=[1, 1]}: f32[2, 6, 7, 5]
  param %dm.weight: f32[12, 1, 3, 2] = uniform(0.3)
  %dm = conv2d(%x, %dm.weight) {bias=false, dilation=[2, 1], groups=6, k=[3, 2], out=12, pad=[2, 0], s=[2, 1]}: f32[2, 12, 4, 4]
  param %c.weight: f32[5, 6, 3, 3] = uniform(0.2)
  param %c.bias: f32[5] = uniform(0.2)
  %c = conv2d(%x, %c.weight, %c.bias) {bias=true, dilation=[1, 1], groups=1, k=[3, 3], out=5, pad=[1, 1], s=[2, 2]}: f32[2, 5, 4, 3]
  param %g.weight: f32[4, 3, 1, 1] = uniform(0.2)
  %g = conv2d(%x, %g.weight) {bias=false, dilation=[1, 1], groups=2, k=[1, 1], out=4, pad=[0, 0], s=[1, 1]}: f32[2, 4, 7, 5]
  %r = reshape(%x) {shape=[2, 6, 35]}: f32[2, 6, 35]
  param %c1.weight: f32[3, 6, 3] = uniform(0.2)
  param %c1.bias: f32[3] = uniform(0.2)
  %c1 = conv1d(%r, %c1.weight, %c1.bias) {bias=true, dilation=1, groups=1, k=3, out=3, pad=1, s=2}: f32[2, 3, 18]
  param %l.weight: f32[9, 5] = uniform(0.3)
  param %l.bias: f32[9] = uniform(0.3)
  %l = linear(%x, %l.weight, %l.bias) {bias=true, out=9}: f32[2, 6, 7, 9]
  input %m: f32[3, 5, 2]
  %mm = matmul(%x, %m) {}: f32[2, 6, 7, 2]
  param %t.weight: f32[6, 2, 3, 3] = uniform(0.3)
  param %t.bias: f32[4] = uniform(0.3)
  %t = conv_transpose2d(%x, %t.weight, %t.bias) {bias=true, dilation=[1, 1], groups=2, k=[3, 3], out=4, output_padding=[1, 0], pad=[1, 1], s=[2, 2]}: f32[2, 4, 14, 9]
  output %o1 = %dw
  output %o2 = %dm
  output %o3 = %c
  output %o4 = %g
  output %o5 = %c1
  output %o6 = %l
  output %o7 = %mm
  output %o8 = %t
}
";
    // `%mm` broadcasts [3, 5, 2] against [2, 6, 7, 5]: invalid, so use a valid batch.
    let text = text
        .replace("input %m: f32[3, 5, 2]", "input %m: f32[6, 5, 2]")
        .replace("%mm = matmul(%x, %m) {}", "%mm = matmul(%x, %m)");
    check(&text, false, 1e-4);
}

#[test]
fn fusion_groups_of_every_kind() {
    // ConvNeXt-like block: dwconv + LayerNorm (both forms), epilogue convs with GELU, layer
    // scale and residual; an elementwise group elsewhere.
    let text = "graph t {
  input %x: f32[1, 5, 7, 9]
  param %dw.weight: f32[5, 1, 7, 7] = uniform(0.2)
  param %dw.bias: f32[5] = uniform(0.2)
  %dw = conv2d(%x, %dw.weight, %dw.bias) {bias=true, dilation=[1, 1], groups=5, k=[7, 7], out=5, pad=[3, 3], s=[1, 1]}: f32[1, 5, 7, 9]
  param %ln.weight: f32[5] = uniform(1.0)
  param %ln.bias: f32[5] = uniform(1.0)
  %ln = layer_norm2d(%dw, %ln.weight, %ln.bias) {affine=true, eps=1e-6}: f32[1, 5, 7, 9]
  param %fc1.weight: f32[11, 5, 1, 1] = uniform(0.4)
  param %fc1.bias: f32[11] = uniform(0.4)
  %fc1 = conv2d(%ln, %fc1.weight, %fc1.bias) {bias=true, dilation=[1, 1], groups=1, k=[1, 1], out=11, pad=[0, 0], s=[1, 1]}: f32[1, 11, 7, 9]
  %act = gelu(%fc1) {approximate=\"none\"}: f32[1, 11, 7, 9]
  param %fc2.weight: f32[5, 11, 1, 1] = uniform(0.3)
  param %fc2.bias: f32[5] = uniform(0.3)
  %fc2 = conv2d(%act, %fc2.weight, %fc2.bias) {bias=true, dilation=[1, 1], groups=1, k=[1, 1], out=5, pad=[0, 0], s=[1, 1]}: f32[1, 5, 7, 9]
  param %gamma: f32[5] = uniform(1.0)
  %gs = reshape(%gamma) {shape=[5, 1, 1]}: f32[5, 1, 1]
  %scaled = mul(%fc2, %gs): f32[1, 5, 7, 9]
  %res = add(%scaled, %x): f32[1, 5, 7, 9]
  param %dw2.weight: f32[5, 1, 3, 3] = uniform(0.3)
  %dw2 = conv2d(%res, %dw2.weight) {bias=false, dilation=[1, 1], groups=5, k=[3, 3], out=5, pad=[1, 1], s=[1, 1]}: f32[1, 5, 7, 9]
  %nhwc = permute(%dw2) {dims=[0, 2, 3, 1]}: f32[1, 7, 9, 5]
  param %ln2.weight: f32[5] = uniform(1.0)
  param %ln2.bias: f32[5] = uniform(1.0)
  %ln2 = layer_norm(%nhwc, %ln2.weight, %ln2.bias) {affine=true, eps=1e-6}: f32[1, 7, 9, 5]
  param %lin.weight: f32[3, 5] = uniform(0.3)
  param %lin.bias: f32[3] = uniform(0.3)
  %lin = linear(%ln2, %lin.weight, %lin.bias) {bias=true, out=3}: f32[1, 7, 9, 3]
  %sig = sigmoid(%lin): f32[1, 7, 9, 3]
  %e1 = tanh(%res): f32[1, 5, 7, 9]
  %e2 = mul(%e1, %gs): f32[1, 5, 7, 9]
  %y = silu(%e2): f32[1, 5, 7, 9]
  output %out = %y
  output %o2 = %sig
}
";
    let report = check(text, true, 1e-4);
    for kind in ["dwconv_norm", "epilogue", "elementwise"] {
        let n = report.checked.iter().filter(|(o, _)| o == kind).count();
        assert!(n >= 1, "no {kind} group in {:?}", report.checked);
    }
    assert!(
        report
            .checked
            .iter()
            .filter(|(o, _)| o == "dwconv_norm")
            .count()
            == 2,
        "both dwconv_norm forms: {:?}",
        report.checked
    );
}

/// Lowers and checks `text` at -O2 and returns how many kernels of group kind `kind` ran.
fn check_groups(text: &str, kind: &str, tol: f32) -> usize {
    let report = check(text, true, tol);
    report.checked.iter().filter(|(o, _)| o == kind).count()
}

/// How an attention applies its scale to the scores.
#[derive(Clone, Copy, Debug)]
enum ScaleForm {
    None,
    /// `scores * s`
    Right,
    /// `s * scores`
    Left,
    /// `scores / s`
    Divide,
}

/// Shapes and layout of one attention test case.
#[derive(Clone, Copy, Debug)]
struct AttentionCase {
    batch: usize,
    heads: usize,
    queries: usize,
    keys: usize,
    head_dim: usize,
    value_dim: usize,
    scale: ScaleForm,
    /// Token-major inputs `[B, N, H, D]` permuted to heads first inside (TNT), the output
    /// permuted back and a residual added; otherwise heads-first inputs with `k` already
    /// transposed, a GELU after, and `k`/`v` shared across the batch (broadcast).
    token_major: bool,
}

impl AttentionCase {
    fn graph(&self) -> String {
        let Self {
            batch: b,
            heads: h,
            queries: nq,
            keys: nk,
            head_dim: d,
            value_dim: dv,
            ..
        } = *self;
        let mut t = String::from("graph t {\n  param %s: f32[] = uniform(1.0)\n");
        if self.token_major {
            t += &format!(
                "  input %q: f32[{b}, {nq}, {h}, {d}]
  input %k: f32[{b}, {nk}, {h}, {d}]
  input %v: f32[{b}, {nk}, {h}, {dv}]
  input %r: f32[{b}, {nq}, {h}, {dv}]
  %qh = permute(%q) {{dims=[0, 2, 1, 3]}}: f32[{b}, {h}, {nq}, {d}]
  %kt = permute(%k) {{dims=[0, 2, 3, 1]}}: f32[{b}, {h}, {d}, {nk}]
  %vh = permute(%v) {{dims=[0, 2, 1, 3]}}: f32[{b}, {h}, {nk}, {dv}]
"
            );
        } else {
            t += &format!(
                "  input %qh: f32[{b}, {h}, {nq}, {d}]
  input %kt: f32[1, {h}, {d}, {nk}]
  input %vh: f32[{h}, {nk}, {dv}]
"
            );
        }
        let scores = format!("f32[{b}, {h}, {nq}, {nk}]");
        t += &format!("  %scores = matmul(%qh, %kt): {scores}\n");
        let logits = match self.scale {
            ScaleForm::None => "scores",
            ScaleForm::Right => {
                t += &format!("  %logits = mul(%scores, %s): {scores}\n");
                "logits"
            }
            ScaleForm::Left => {
                t += &format!("  %logits = mul(%s, %scores): {scores}\n");
                "logits"
            }
            ScaleForm::Divide => {
                t += &format!("  %logits = div(%scores, %s): {scores}\n");
                "logits"
            }
        };
        t += &format!(
            "  %attn = softmax(%{logits}) {{axis=-1}}: {scores}\n  %o = matmul(%attn, %vh): f32[{b}, {h}, {nq}, {dv}]\n"
        );
        if self.token_major {
            t += &format!(
                "  %ot = permute(%o) {{dims=[0, 2, 1, 3]}}: f32[{b}, {nq}, {h}, {dv}]
  %y = add(%ot, %r): f32[{b}, {nq}, {h}, {dv}]
"
            );
        } else {
            t += &format!("  %y = gelu(%o) {{approximate=\"none\"}}: f32[{b}, {h}, {nq}, {dv}]\n");
        }
        t + "  output %out = %y\n}\n"
    }
}

/// Logits are sums of `head_dim` products of inputs in [-2, 2], scaled by up to 2: the f32
/// scores differ from the f64 reference by about 1e-6 of their size, which the softmax passes
/// on.
const ATTENTION_TOL: f32 = 1e-4;

#[test]
fn attention_groups() {
    let cases = [
        // TNT's inner and outer attention (test model sizes), odd sizes.
        (1, 2, 17, 17, 16, 16, ScaleForm::Right, true),
        (16, 2, 4, 4, 4, 4, ScaleForm::Right, true),
        (2, 3, 5, 5, 7, 7, ScaleForm::Left, true),
        // Cross attention: more keys than a vector, long contiguous head rows.
        (2, 3, 3, 37, 13, 5, ScaleForm::Divide, false),
        (1, 1, 1, 1, 1, 1, ScaleForm::None, false),
        (3, 2, 9, 8, 8, 11, ScaleForm::None, true),
    ];
    for (batch, heads, queries, keys, head_dim, value_dim, scale, token_major) in cases {
        let case = AttentionCase {
            batch,
            heads,
            queries,
            keys,
            head_dim,
            value_dim,
            scale,
            token_major,
        };
        let n = check_groups(&case.graph(), "attention", ATTENTION_TOL);
        assert_eq!(n, 1, "{case:?} did not fuse into one attention kernel");
    }
}

/// A hand-written `fff` group whose convolutions are grouped, strided and dilated and read
/// resized or per-channel-normalised inputs (forms the direct convolution must get right
/// beyond what the pass produces today).
const FFF_BY_HAND: &str = "graph t {
  input %a: f32[1, 4, 3, 3]
  input %b: f32[1, 3, 12, 12]
  param %w0: f32[6, 2, 3, 3] = uniform(0.3)
  param %w1: f32[6, 3, 3, 3] = uniform(0.3)
  param %bias: f32[6] = uniform(0.3)
  %y = fused fff(%a, %w0, %bias, %b, %w1): f32[1, 6, 6, 6] {
    input %in0: f32[1, 4, 3, 3]
    input %in1: f32[6, 2, 3, 3]
    input %in2: f32[6]
    input %in3: f32[1, 3, 12, 12]
    input %in4: f32[6, 3, 3, 3]
    %up = upsample(%in0) {align_corners=false, mode=\"nearest\", scale=2, size=none}: f32[1, 4, 6, 6]
    %p0 = conv2d(%up, %in1, %in2) {bias=true, dilation=[1, 1], groups=2, k=[3, 3], out=6, pad=[1, 1], s=[1, 1]}: f32[1, 6, 6, 6]
    %t = tanh(%in3): f32[1, 3, 12, 12]
    %p1 = conv2d(%t, %in4) {bias=false, dilation=[2, 2], groups=1, k=[3, 3], out=6, pad=[2, 2], s=[2, 2]}: f32[1, 6, 6, 6]
    %sum = add(%p0, %p1): f32[1, 6, 6, 6]
    %act = silu(%sum): f32[1, 6, 6, 6]
    output %out = %act
  }
  output %o = %y
}
";

#[test]
fn fff_groups() {
    // PoAPL-style pyramid pooling: bilinear resizes of pooled maps read inside a padded 3x3.
    let pyramid = "graph t {
  input %x: f32[1, 3, 7, 6]
  input %p1: f32[1, 2, 1, 1]
  input %p2: f32[1, 2, 3, 2]
  %u1 = upsample(%p1) {align_corners=true, mode=\"bilinear\", scale=none, size=[7, 6]}: f32[1, 2, 7, 6]
  %u2 = upsample(%p2) {align_corners=false, mode=\"bilinear\", scale=none, size=[7, 6]}: f32[1, 2, 7, 6]
  %cat = concat(%x, %u1, %u2) {axis=1}: f32[1, 7, 7, 6]
  param %c.weight: f32[5, 7, 3, 3] = uniform(0.2)
  param %c.bias: f32[5] = uniform(0.2)
  %c = conv2d(%cat, %c.weight, %c.bias) {bias=true, dilation=[1, 1], groups=1, k=[3, 3], out=5, pad=[1, 1], s=[1, 1]}: f32[1, 5, 7, 6]
  %y = relu(%c): f32[1, 5, 7, 6]
  output %out = %y
}
";
    assert_eq!(check_groups(pyramid, "fff", 1e-4), 1);
    // DenseNet: BatchNorm and ReLU over the concat, applied per input inside the group; the
    // single-input form is a contraction reading a value computed in its group.
    let dense = "graph t {
  input %a: f32[1, 3, 5, 7]
  input %b: f32[1, 2, 5, 7]
  param %n.weight: f32[5] = uniform(1.0)
  param %n.bias: f32[5] = uniform(1.0)
  param %n.running_mean: f32[5] = uniform(1.0)
  param %n.running_var: f32[5] = ones
  %cat = concat(%a, %b) {axis=1}: f32[1, 5, 5, 7]
  %n = batch_norm2d(%cat, %n.weight, %n.bias, %n.running_mean, %n.running_var) {eps=1e-5}: f32[1, 5, 5, 7]
  %r = relu(%n): f32[1, 5, 5, 7]
  param %c.weight: f32[6, 5, 1, 1] = uniform(0.3)
  %c = conv2d(%r, %c.weight) {bias=false, dilation=[1, 1], groups=1, k=[1, 1], out=6, pad=[0, 0], s=[1, 1]}: f32[1, 6, 5, 7]
  %y = relu(%c): f32[1, 6, 5, 7]
  param %m.weight: f32[3] = uniform(1.0)
  param %m.bias: f32[3] = uniform(1.0)
  param %m.running_mean: f32[3] = uniform(1.0)
  param %m.running_var: f32[3] = ones
  %one = concat(%a) {axis=1}: f32[1, 3, 5, 7]
  %m = batch_norm2d(%one, %m.weight, %m.bias, %m.running_mean, %m.running_var) {eps=1e-5}: f32[1, 3, 5, 7]
  %mr = relu(%m): f32[1, 3, 5, 7]
  param %d.weight: f32[4, 3, 1, 1] = uniform(0.3)
  param %d.bias: f32[4] = uniform(0.3)
  %d = conv2d(%mr, %d.weight, %d.bias) {bias=true, dilation=[1, 1], groups=1, k=[1, 1], out=4, pad=[0, 0], s=[1, 1]}: f32[1, 4, 5, 7]
  output %out = %y
  output %o2 = %d
}
";
    assert_eq!(check_groups(dense, "fff", 1e-4), 2);
    // The BatchNorm's per-channel scale and shift are tabulated once per grid iteration.
    let mut g = parse(dense);
    optimize(&mut g);
    let c = g.find("c").expect("the group keeps the conv's name");
    let k = bbc_compiler::kernel::lower_node(&g, c).expect("lowers");
    assert_eq!(k.origin, "fff");
    assert!(
        !k.scratch.is_empty(),
        "{}",
        bbc_compiler::kernel::print_kernel(&k)
    );
    // Spatial broadcast decoder: a latent tiled by `expand` and a coordinate grid (convolved
    // once, outside the group), no padding.
    let sbd = "graph t {
  input %z: f32[1, 4]
  %zr = reshape(%z) {shape=[1, 4, 1, 1]}: f32[1, 4, 1, 1]
  %tiled = expand(%zr) {shape=[1, 4, 9, 9]}: f32[1, 4, 9, 9]
  %g = coord_grid() {h=9, hi=1.0, lo=-1.0, w=9}: f32[2, 9, 9]
  %gb = reshape(%g) {shape=[1, 2, 9, 9]}: f32[1, 2, 9, 9]
  %cat = concat(%tiled, %gb) {axis=1}: f32[1, 6, 9, 9]
  param %c.weight: f32[5, 6, 3, 3] = uniform(0.3)
  param %c.bias: f32[5] = uniform(0.3)
  %c = conv2d(%cat, %c.weight, %c.bias) {bias=true, dilation=[1, 1], groups=1, k=[3, 3], out=5, pad=[0, 0], s=[1, 1]}: f32[1, 5, 7, 7]
  %y = relu(%c): f32[1, 5, 7, 7]
  output %out = %y
}
";
    assert_eq!(check_groups(sbd, "fff", 1e-4), 1);
    // Res2Net: a channel slice of an input read through, a residual after.
    let res2net = "graph t {
  input %x: f32[1, 8, 5, 6]
  input %p: f32[1, 2, 5, 6]
  input %q: f32[1, 2, 5, 6]
  %sp = slice(%x) {axis=1, end=8, start=6, step=1}: f32[1, 2, 5, 6]
  %cat = concat(%p, %q, %sp) {axis=1}: f32[1, 6, 5, 6]
  param %c.weight: f32[8, 6, 1, 1] = uniform(0.3)
  param %c.bias: f32[8] = uniform(0.3)
  %c = conv2d(%cat, %c.weight, %c.bias) {bias=true, dilation=[1, 1], groups=1, k=[1, 1], out=8, pad=[0, 0], s=[1, 1]}: f32[1, 8, 5, 6]
  %res = add(%c, %x): f32[1, 8, 5, 6]
  %y = relu(%res): f32[1, 8, 5, 6]
  output %out = %y
}
";
    assert_eq!(check_groups(res2net, "fff", 1e-4), 1);
    assert_eq!(check_groups(FFF_BY_HAND, "fff", 1e-4), 1);
}

#[test]
fn padded_windows_across_widths() {
    // Versioned vector loops take the border-free body only where no clamp or bounds test
    // can fire; every width from below one vector to a few vectors, with pads, strides and
    // dilations, must agree with the reference in both modes.
    for w in 1..=11usize {
        let pooled = (w + 2 - 3) / 2 + 1;
        let dilated = w + 4 - 4;
        let text = format!(
            "graph t {{
  input %x: f32[1, 4, 5, {w}]
  param %dw.weight: f32[4, 1, 3, 3] = uniform(0.3)
  %dw = conv2d(%x, %dw.weight) {{bias=false, dilation=[2, 2], groups=4, k=[3, 3], out=4, pad=[2, 2], s=[1, 1]}}: f32[1, 4, 5, {dilated}]
  %mp = max_pool2d(%x) {{ceil_mode=false, k=[3, 3], pad=[1, 1], s=[2, 2]}}: f32[1, 4, 3, {pooled}]
  %ap = avg_pool2d(%x) {{ceil_mode=false, count_include_pad=false, k=[3, 3], pad=[1, 1], s=[1, 1]}}: f32[1, 4, 5, {w}]
  param %g.w: f32[6, 2, 3, 3] = uniform(0.3)
  %g = fused fff(%x, %g.w): f32[1, 6, 5, {w}] {{
    input %in0: f32[1, 4, 5, {w}]
    input %in1: f32[6, 2, 3, 3]
    %t = tanh(%in0): f32[1, 4, 5, {w}]
    %c = conv2d(%t, %in1) {{bias=false, dilation=[1, 1], groups=2, k=[3, 3], out=6, pad=[1, 1], s=[1, 1]}}: f32[1, 6, 5, {w}]
    output %out = %c
  }}
  output %o1 = %dw
  output %o2 = %mp
  output %o3 = %ap
  output %o4 = %g
}}
"
        );
        let report = check(&text, false, 1e-4);
        assert_eq!(report.checked.len(), 4, "width {w}: {:?}", report.checked);
    }
}

#[test]
fn unsupported_nodes_are_named_not_panics() {
    let text = "graph t {\n  input %a: f32[1, 1, 9, 9]\n  input %b: f32[1, 1, 9, 9]\n  %y = uiqi(%a, %b) {window=8}: f32[1]\n  output %out = %y\n}\n";
    let g = parse(text);
    let y = g.find("y").expect("node");
    match bbc_compiler::kernel::lower_node(&g, y) {
        Err(LowerError::Unsupported { op, .. }) => assert_eq!(op, "uiqi"),
        Ok(k) => panic!(
            "uiqi lowered unexpectedly:\n{}",
            bbc_compiler::kernel::print_kernel(&k)
        ),
    }
    // An attention group normalising over the query axis has no single-row form.
    let text = "graph t {
  input %q: f32[2, 3, 4]
  input %k: f32[2, 4, 3]
  input %v: f32[2, 3, 5]
  %y = fused attention(%q, %k, %v): f32[2, 3, 5] {
    input %in0: f32[2, 3, 4]
    input %in1: f32[2, 4, 3]
    input %in2: f32[2, 3, 5]
    %s = matmul(%in0, %in1): f32[2, 3, 3]
    %a = softmax(%s) {axis=1}: f32[2, 3, 3]
    %o = matmul(%a, %in2): f32[2, 3, 5]
    output %out = %o
  }
  output %out = %y
}
";
    let g = parse(text);
    let y = g.find("y").expect("node");
    match bbc_compiler::kernel::lower_node(&g, y) {
        Err(LowerError::Unsupported { op, reason }) => {
            assert_eq!(op, "fused attention");
            assert!(reason.contains("axis 1, not the key axis"), "{reason}");
        }
        Ok(k) => panic!(
            "a query-axis softmax lowered:\n{}",
            bbc_compiler::kernel::print_kernel(&k)
        ),
    }
}

/// A one-dimensional kernel `out[i] = f(in[i])` built directly in Kernel IR.
fn unary_kernel(op: Unary, n: usize) -> Kernel {
    let i = Var { id: 0, extent: n };
    let buf = |name: &str, access| Buffer {
        name: name.into(),
        shape: vec![n],
        access,
    };
    Kernel {
        name: op.name().into(),
        origin: "test".into(),
        buffers: vec![buf("in0", Access::Read), buf("out", Access::Write)],
        tables: Vec::new(),
        scratch: Vec::new(),
        body: Body::Loops {
            grid: i,
            vector: true,
            body: vec![Stmt::Store {
                buf: 1,
                index: Index::Var(i),
                value: Expr::unary(op, Expr::load(0, i)),
            }],
        },
    }
}

#[test]
fn approximation_errors() {
    // Dense sweeps; odd count so the scalar tail runs the same approximation.
    let sweep = |lo: f32, hi: f32| -> Vec<f32> {
        let n = 200_001;
        (0..n)
            .map(|k| lo + (hi - lo) * k as f32 / (n - 1) as f32)
            .collect()
    };
    let erf = bbc_compiler::ops::erf;
    // (intrinsic, sweep from, sweep to, f64 reference, relative error?, bound)
    type Case<'a> = (Unary, f32, f32, &'a dyn Fn(f64) -> f64, bool, f64);
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let cases: [Case; 8] = [
        (Unary::Exp, -86.0, 88.0, &f64::exp, true, 3e-7),
        // In the subnormals (below −87.34; 2^−149 = 1.4e-45 apart), absolute.
        (Unary::Exp, -104.0, -87.4, &f64::exp, false, 1.5e-45),
        (Unary::Expm1, -86.0, 88.0, &f64::exp_m1, true, 3e-7),
        // Around 0, where `exp(x) − 1` would cancel, relative to its value.
        (Unary::Expm1, -1.0, 1.0, &f64::exp_m1, true, 3e-7),
        (Unary::Tanh, -10.0, 10.0, &f64::tanh, false, 2e-6),
        (Unary::Erf, -6.0, 6.0, &erf, false, 2e-6),
        (Unary::Sigmoid, -30.0, 30.0, &sigmoid, false, 2e-6),
        // Where sigmoid is small, relative to its value (it is `exp(x)`'s accuracy there).
        (Unary::Sigmoid, -87.0, 0.0, &sigmoid, true, 5e-7),
    ];
    for (op, lo, hi, f, relative, bound) in cases {
        let xs = sweep(lo, hi);
        let k = unary_kernel(op, xs.len());
        let c = compile(&k, &Options::default()).expect("compiles");
        let mut out = vec![0.0; xs.len()];
        c.run(&[&xs], &mut out).expect("runs");
        let mut worst = (0.0f64, 0.0f32);
        for (&x, &y) in xs.iter().zip(&out) {
            let want = f(f64::from(x));
            let err = (f64::from(y) - want).abs() / if relative { want.abs() } else { 1.0 };
            if err > worst.0 {
                worst = (err, x);
            }
        }
        println!(
            "{}: max {} error {:.3e} at x = {} (fma: {})",
            op.name(),
            if relative { "relative" } else { "absolute" },
            worst.0,
            worst.1,
            host_has_fma()
        );
        assert!(
            worst.0 < bound,
            "{}: error {} at {}",
            op.name(),
            worst.0,
            worst.1
        );
    }
    // Special values propagate.
    let out = run_unary(
        Unary::Exp,
        &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 100.0, 0.0],
    );
    assert!(out[0].is_nan());
    assert_eq!(out[1], f32::INFINITY);
    assert_eq!(out[2], 0.0);
    assert_eq!(out[3], f32::INFINITY);
    assert_eq!(out[4], 1.0);
    // The last subnormals, and 0 past them.
    let out = run_unary(Unary::Exp, &[-100.0, -103.0, -103.99, -104.5, -1e9]);
    assert!(out[0] > 2.6e-44 && out[0] < 3.9e-44, "{}", out[0]);
    assert_eq!(
        out[1],
        f32::from_bits(1),
        "e^−103 is the smallest subnormal"
    );
    assert_eq!(out[2..], [0.0; 3]);
    let xs = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        100.0,
        0.0,
        -1e-30,
    ];
    let out = run_unary(Unary::Expm1, &xs);
    assert!(out[0].is_nan());
    assert_eq!(out[1..], [f32::INFINITY, -1.0, f32::INFINITY, 0.0, -1e-30]);
    let xs = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        100.0,
        -100.0,
        -0.0,
    ];
    let out = run_unary(Unary::Sigmoid, &xs);
    assert!(out[0].is_nan());
    assert_eq!(out[1..], [1.0, 0.0, 1.0, 0.0, 0.5]);
}

/// `op` compiled over `xs`.
fn run_unary(op: Unary, xs: &[f32]) -> Vec<f32> {
    let c = compile(&unary_kernel(op, xs.len()), &Options::default()).expect("compiles");
    let mut out = vec![0.0; xs.len()];
    c.run(&[xs], &mut out).expect("runs");
    out
}

#[test]
fn bounds_checked_mode_reports_instead_of_touching_memory() {
    // A deliberately wrong kernel: reads in0[i + 3] for i < n.
    let n = 10;
    let i = Var { id: 0, extent: n };
    let mut k = unary_kernel(Unary::Neg, n);
    k.body = Body::Loops {
        grid: i,
        vector: true,
        body: vec![Stmt::Store {
            buf: 1,
            index: Index::Var(i),
            value: Expr::load(0, bbc_compiler::kernel::index::add(i, 3i64)),
        }],
    };
    let c = compile(
        &k,
        &Options {
            bounds_checked: true,
            ..Options::default()
        },
    )
    .expect("compiles");
    let input: Vec<f32> = (0..n).map(|v| v as f32).collect();
    let mut out = vec![0.0; n];
    match c.run(&[&input], &mut out) {
        Err(RunError::OutOfBounds { buffer, len, .. }) => {
            assert_eq!((buffer.as_str(), len), ("in0", n));
        }
        other => panic!("expected an out-of-bounds report, got {other:?}"),
    }
    // The in-bounds elements were computed.
    assert_eq!(&out[..4], &[3.0, 4.0, 5.0, 6.0]);
    // Wrong buffer sizes are refused before running.
    assert!(matches!(
        c.run(&[&input[..5]], &mut out),
        Err(RunError::Buffers(_))
    ));
}

#[test]
fn bounds_checked_mode_covers_scratch_arrays() {
    // A deliberately wrong kernel: a scratch row of 4 written at i + 2 for i < 4, then read.
    let n = 4;
    let i = Var { id: 0, extent: n };
    let mut k = unary_kernel(Unary::Neg, n);
    k.scratch = vec![bbc_compiler::kernel::Scratch {
        name: "row".into(),
        len: n,
    }];
    let shifted = bbc_compiler::kernel::index::add(i, 2i64);
    k.body = Body::Loops {
        grid: i,
        vector: false,
        body: vec![
            Stmt::ScratchStore {
                scratch: 0,
                index: shifted.clone(),
                value: Expr::load(0, i),
            },
            Stmt::Store {
                buf: 1,
                index: Index::Var(i),
                value: Expr::Scratch {
                    scratch: 0,
                    index: shifted,
                },
            },
        ],
    };
    let checked = Options {
        bounds_checked: true,
        ..Options::default()
    };
    let c = compile(&k, &checked).expect("compiles");
    let input = [1.0, 2.0, 3.0, 4.0];
    let mut out = vec![0.0; n];
    match c.run(&[&input], &mut out) {
        Err(RunError::OutOfBounds {
            buffer,
            index,
            len,
            count,
        }) => {
            assert_eq!((buffer.as_str(), index, len), ("scratch row", 4, n));
            // Iterations 2 and 3 each write and read out of bounds.
            assert_eq!(count, 4);
        }
        other => panic!("expected an out-of-bounds report, got {other:?}"),
    }
    // The in-bounds iterations read back what they wrote.
    assert_eq!(&out[..2], &[1.0, 2.0]);
}

const ELEMENTWISE: &[&str] = &[
    "relu",
    "gelu",
    "silu",
    "sigmoid",
    "tanh",
    "neg",
    "abs",
    "hardswish",
    "add",
    "mul",
    "sub",
    "maximum",
    "minimum",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Attention over random shapes, scale forms and layouts.
    #[test]
    fn random_attention_shapes(
        dims in (1usize..3, 1usize..4, 1usize..10, 1usize..24, 1usize..12, 1usize..10),
        scale in 0usize..4,
        token_major in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let (batch, heads, queries, keys, head_dim, value_dim) = dims;
        let scale = [ScaleForm::None, ScaleForm::Right, ScaleForm::Left, ScaleForm::Divide][scale];
        let case = AttentionCase { batch, heads, queries, keys, head_dim, value_dim, scale, token_major };
        let mut g = parse(&case.graph());
        optimize(&mut g);
        let report = check_graph(&g, seed, ATTENTION_TOL);
        prop_assert!(report.unsupported.is_empty(), "{:?}", report.unsupported);
        prop_assert!(report.checked.iter().any(|(o, _)| o == "attention"), "{:?}", report.checked);
    }

    /// Random elementwise chains with broadcast operands, fused by `fuse-elementwise`.
    #[test]
    fn random_elementwise_groups(
        dims in prop::collection::vec(1usize..6, 1..4),
        ops in prop::collection::vec((0..ELEMENTWISE.len(), 0usize..3), 2..7),
        seed in 0u64..1000,
    ) {
        let shape = dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
        // A broadcast operand: the last axis only, and a scalar.
        let last = dims.last().copied().unwrap_or(1);
        let mut body = format!("  input %v: f32[{last}]\n  input %s: f32[]\n  %t0 = abs(%x): f32[{shape}]\n");
        let mut prev = "t0".to_string();
        for (i, (op, operand)) in ops.iter().enumerate() {
            let name = ELEMENTWISE[*op];
            let other = ["v", "s", "x"][*operand];
            let args = if matches!(name, "add" | "mul" | "sub" | "maximum" | "minimum") {
                format!("%{prev}, %{other}")
            } else {
                format!("%{prev}")
            };
            let attrs = if name == "gelu" { " {approximate=\"none\"}" } else { "" };
            body.push_str(&format!("  %t{} = {name}({args}){attrs}: f32[{shape}]\n", i + 1));
            prev = format!("t{}", i + 1);
        }
        body.push_str(&format!("  %y = identity(%{prev}): f32[{shape}]"));
        let text = graph(&dims, &body);
        let mut g = parse(&text);
        optimize(&mut g);
        let report = check_graph(&g, seed, 5e-5);
        prop_assert!(report.unsupported.is_empty(), "{:?}", report.unsupported);
    }
}

#[test]
fn elementwise_chain_throughput() {
    // GELU(x·a + b) over 1M elements, single thread; prints compile time and ns/element.
    let n = 1 << 20;
    let text = "graph t {\n  input %x: f32[4, 256, 1024]\n  input %a: f32[1024]\n  input %b: f32[1024]\n  %m = mul(%x, %a): f32[4, 256, 1024]\n  %p = add(%m, %b): f32[4, 256, 1024]\n  %y = gelu(%p) {approximate=\"tanh\"}: f32[4, 256, 1024]\n  output %out = %y\n}\n";
    let mut g = parse(text);
    optimize(&mut g);
    let y = g.outputs[0].value;
    let k = bbc_compiler::kernel::lower_node(&g, y).expect("lowers");
    assert_eq!(k.origin, "elementwise");
    let c = compile(&k, &Options::default()).expect("compiles");
    let mut rng = kernel_common::Rng(1);
    let x: Vec<f32> = (0..n).map(|_| rng.uniform(-3.0, 3.0)).collect();
    let a: Vec<f32> = (0..1024).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let b = a.clone();
    let mut out = vec![0.0; n];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        c.run(&[&x, &a, &b], &mut out).expect("runs");
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "elementwise chain: compile {:?} ({} bytes of code), {:.2} ns/element",
        c.compile_time,
        c.code_size,
        best * 1e9 / n as f64
    );
    let k0 = (2.0 / std::f64::consts::PI).sqrt();
    for i in (0..n).step_by(997) {
        let v = f64::from(x[i] * a[i % 1024] + b[i % 1024]);
        let want = 0.5 * v * (1.0 + (k0 * (v + 0.044715 * v * v * v)).tanh());
        assert!((f64::from(out[i]) - want).abs() < 1e-5 * (1.0 + want.abs()));
    }
}

/// Lowers and compiles the `kind` group of `text` (at -O2), runs it single-threaded a few
/// times and checks it against the reference; prints the best time against the reference
/// evaluation of the same graph.
fn time_group(label: &str, text: &str, kind: &str, flops: f64, tol: f32) {
    let mut g = parse(text);
    optimize(&mut g);
    let id = g
        .topo_order()
        .into_iter()
        .find(|&n| matches!(&g.node(n).kind, bbc_compiler::ir::NodeKind::Fused { kind: k, .. } if k == kind))
        .unwrap_or_else(|| panic!("{label}: no `{kind}` group"));
    let k = bbc_compiler::kernel::lower_node(&g, id).expect("lowers");
    let started = std::time::Instant::now();
    let values = kernel_common::reference_values(&g, &mut kernel_common::Rng(3));
    let reference = started.elapsed();
    let c = compile(&k, &Options::default()).expect("compiles");
    let inputs: Vec<&[f32]> = g
        .inputs(id)
        .iter()
        .map(|o| values[o].as_slice().expect("standard layout"))
        .collect();
    let want = values[&id].as_slice().expect("standard layout");
    let mut out = vec![0.0; want.len()];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        c.run(&inputs, &mut out).expect("runs");
        best = best.min(t.elapsed().as_secs_f64());
    }
    let err = kernel_common::max_error(&out, want);
    assert!(err <= tol, "{label}: error {err}");
    println!(
        "{label}: {:.3} ms, {:.2} GFLOP/s (reference evaluation of the graph: {:.1} ms); compile {:?}",
        best * 1e3,
        flops / best * 1e-9,
        reference.as_secs_f64() * 1e3,
        c.compile_time
    );
}

#[test]
fn multi_contraction_group_throughput() {
    // TNT-S outer attention: 197 tokens, 6 heads of 64.
    let tnt = AttentionCase {
        batch: 1,
        heads: 6,
        queries: 197,
        keys: 197,
        head_dim: 64,
        value_dim: 64,
        scale: ScaleForm::Right,
        token_major: true,
    };
    let flops = 2.0 * (6 * 197 * 197 * (64 + 64)) as f64;
    time_group(
        "attention 6x197x64",
        &tnt.graph(),
        "attention",
        flops,
        ATTENTION_TOL,
    );
    // `fuse-fff` forms its concat groups only for small products (at most 2^16
    // multiply-adds), so the three shapes below are the models' at that size.
    // Res2Net-style: four 6-channel inputs (one a slice) into 16, a residual and a ReLU.
    let res2net = "graph t {
  input %x: f32[1, 24, 12, 12]
  input %p: f32[1, 6, 12, 12]
  input %q: f32[1, 6, 12, 12]
  input %r: f32[1, 6, 12, 12]
  input %h: f32[1, 16, 12, 12]
  %sp = slice(%x) {axis=1, end=24, start=18, step=1}: f32[1, 6, 12, 12]
  %cat = concat(%p, %q, %r, %sp) {axis=1}: f32[1, 24, 12, 12]
  param %c.weight: f32[16, 24, 1, 1] = uniform(0.1)
  param %c.bias: f32[16] = uniform(0.1)
  %c = conv2d(%cat, %c.weight, %c.bias) {bias=true, dilation=[1, 1], groups=1, k=[1, 1], out=16, pad=[0, 0], s=[1, 1]}: f32[1, 16, 12, 12]
  %res = add(%c, %h): f32[1, 16, 12, 12]
  %y = relu(%res): f32[1, 16, 12, 12]
  output %out = %y
}
";
    let flops = 2.0 * (24 * 16 * 12 * 12) as f64;
    time_group("fff 1x1 4x6->16 12x12", res2net, "fff", flops, 1e-4);
    // RDN-style local fusion: two 4-channel inputs, a padded 3x3 into 8, 10×10.
    let rdn = "graph t {
  input %a: f32[1, 4, 10, 10]
  input %b: f32[1, 4, 10, 10]
  %cat = concat(%a, %b) {axis=1}: f32[1, 8, 10, 10]
  param %c.weight: f32[8, 8, 3, 3] = uniform(0.05)
  param %c.bias: f32[8] = uniform(0.05)
  %c = conv2d(%cat, %c.weight, %c.bias) {bias=true, dilation=[1, 1], groups=1, k=[3, 3], out=8, pad=[1, 1], s=[1, 1]}: f32[1, 8, 10, 10]
  %y = relu(%c): f32[1, 8, 10, 10]
  output %out = %y
}
";
    let flops = 2.0 * (8 * 9 * 8 * 10 * 10) as f64;
    time_group("fff 3x3 2x4->8 10x10", rdn, "fff", flops, 1e-4);
    // DenseNet-style transition: BatchNorm and ReLU over four 8-channel inputs, then a 1x1
    // into 16, 8×8.
    let mut dense = String::from("graph t {\n");
    for i in 0..4 {
        dense += &format!("  input %x{i}: f32[1, 8, 8, 8]\n");
    }
    dense += "  %cat = concat(%x0, %x1, %x2, %x3) {axis=1}: f32[1, 32, 8, 8]
  param %n.weight: f32[32] = uniform(1.0)
  param %n.bias: f32[32] = uniform(1.0)
  param %n.running_mean: f32[32] = uniform(1.0)
  param %n.running_var: f32[32] = ones
  %n = batch_norm2d(%cat, %n.weight, %n.bias, %n.running_mean, %n.running_var) {eps=1e-5}: f32[1, 32, 8, 8]
  %r = relu(%n): f32[1, 32, 8, 8]
  param %c.weight: f32[16, 32, 1, 1] = uniform(0.05)
  %y = conv2d(%r, %c.weight) {bias=false, dilation=[1, 1], groups=1, k=[1, 1], out=16, pad=[0, 0], s=[1, 1]}: f32[1, 16, 8, 8]
  output %out = %y
}
";
    let flops = 2.0 * (32 * 16 * 8 * 8) as f64;
    time_group("fff bn+relu+1x1 4x8->16 8x8", &dense, "fff", flops, 1e-4);
}

/// The epilogue of a 1x1 convolution `24 -> rows` over a `side × side` map followed by
/// `tail` (lines defining `%y` from the convolution `%c`), lowered at -O2 and compiled, with
/// its operands and the raw product the GEMM driver would leave in the output.
struct EpilogueBench {
    compiled: bbc_compiler::codegen::cpu::CompiledKernel,
    inputs: Vec<Vec<f32>>,
    product: Vec<f32>,
    want: Vec<f32>,
    rows: usize,
    cols: usize,
}

fn epilogue_bench(rows: usize, side: usize, tail: &str) -> EpilogueBench {
    let text = format!(
        "graph t {{
  input %x: f32[1, 24, {side}, {side}]
  input %r: f32[1, {rows}, {side}, {side}]
  param %c.weight: f32[{rows}, 24, 1, 1] = uniform(0.3)
  param %c.bias: f32[{rows}] = uniform(0.3)
  param %gamma: f32[{rows}] = uniform(1.0)
  %c = conv2d(%x, %c.weight, %c.bias) {{bias=true, dilation=[1, 1], groups=1, k=[1, 1], out={rows}, pad=[0, 0], s=[1, 1]}}: f32[1, {rows}, {side}, {side}]
{tail}
  output %out = %y
}}
"
    );
    let mut g = parse(&text);
    optimize(&mut g);
    let id = g
        .topo_order()
        .into_iter()
        .find(|&n| matches!(&g.node(n).kind, bbc_compiler::ir::NodeKind::Fused { kind, .. } if kind == "epilogue"))
        .unwrap_or_else(|| panic!("no epilogue group in\n{text}"));
    let kernel = bbc_compiler::kernel::lower_node(&g, id).expect("lowers");
    let values = kernel_common::reference_values(&g, &mut kernel_common::Rng(5));
    let inputs: Vec<Vec<f32>> = g
        .inputs(id)
        .iter()
        .map(|o| values[o].as_slice().expect("standard layout").to_vec())
        .collect();
    let want = values[&id].as_slice().expect("standard layout").to_vec();
    let Body::Contraction(c) = &kernel.body else {
        panic!("an epilogue group lowers to a contraction")
    };
    let mut bufs = inputs.clone();
    bufs.push(vec![0.0; want.len()]);
    c.reference_product(&mut bufs);
    let product = bufs.pop().expect("the output buffer");
    let compiled = compile(&kernel, &Options::default()).expect("compiles");
    EpilogueBench {
        compiled,
        inputs,
        product,
        want,
        rows,
        cols: side * side,
    }
}

impl EpilogueBench {
    /// Checks one pass of the epilogue over the whole output in `tile_rows × tile_cols`
    /// tiles against the reference, then returns the best time of running it on the first
    /// such tile repeatedly (in cache, as after the GEMM writes it), in ns per element.
    fn ns_per_element(&self, tile_rows: usize, tile_cols: usize) -> f64 {
        let inputs: Vec<&[f32]> = self.inputs.iter().map(Vec::as_slice).collect();
        let mut out = self.product.clone();
        for r in (0..self.rows).step_by(tile_rows) {
            for c in (0..self.cols).step_by(tile_cols) {
                let rows = r..(r + tile_rows).min(self.rows);
                let cols = c..(c + tile_cols).min(self.cols);
                self.compiled
                    .run_epilogue_tile(&inputs, &mut out, 0, rows, cols)
                    .expect("runs");
            }
        }
        let err = kernel_common::max_error(&out, &self.want);
        assert!(
            err <= 1e-4,
            "error {err} over {tile_rows}x{tile_cols} tiles"
        );
        let (rows, cols) = (tile_rows.min(self.rows), tile_cols.min(self.cols));
        // Enough calls for about a million elements per timing.
        let calls = (1 << 20) / (rows * cols) + 1;
        let mut best = f64::INFINITY;
        for _ in 0..7 {
            let t = std::time::Instant::now();
            for _ in 0..calls {
                self.compiled
                    .run_epilogue_tile(&inputs, &mut out, 0, 0..rows, 0..cols)
                    .expect("runs");
            }
            best = best.min(t.elapsed().as_secs_f64() / calls as f64);
        }
        best * 1e9 / (rows * cols) as f64
    }
}

#[test]
fn contraction_epilogue_throughput() {
    // EfficientNet/ConvNeXt-style epilogues on a 96 × 3136 (56×56) NCHW output, single
    // thread: the whole plane as one tile, the pointwise convolution driver's tiles (64K
    // output elements: 96 rows × ~640 columns), 16-row tiles, and narrow 8-column tiles.
    let cases = [
        ("bias + relu", "  %y = relu(%c): f32[1, 96, 56, 56]"),
        ("bias + silu", "  %y = silu(%c): f32[1, 96, 56, 56]"),
        (
            "bias + gelu",
            "  %y = gelu(%c) {approximate=\"none\"}: f32[1, 96, 56, 56]",
        ),
        (
            "bias + layer scale + residual",
            "  %gs = reshape(%gamma) {shape=[96, 1, 1]}: f32[96, 1, 1]
  %s = mul(%c, %gs): f32[1, 96, 56, 56]
  %y = add(%s, %r): f32[1, 96, 56, 56]",
        ),
    ];
    for (label, tail) in cases {
        let bench = epilogue_bench(96, 56, tail);
        let shapes = [(96, 3136), (96, 640), (16, 3136), (96, 8)];
        let times: Vec<String> = shapes
            .iter()
            .map(|&(r, c)| format!("{r}x{c}: {:.3}", bench.ns_per_element(r, c)))
            .collect();
        println!(
            "epilogue {label}: ns/element by tile {} ({} bytes of code)",
            times.join(", "),
            bench.compiled.code_size
        );
    }
}
