//! The Kernel IR text of representative lowerings, pinned with insta: an elementwise group,
//! a `dwconv_norm` group, an `epilogue` group (bias and residual; the layer scale folds into
//! the weight), softmax,
//! layer_norm, a padded max pool, a permute, an `attention` group (permuted q/k/v, scale,
//! permute and residual after) and an `fff` group (a padded convolution over a concat with a
//! bilinear resize).

mod kernel_common;

use bbc_compiler::kernel::{lower_node, print_kernel};
use kernel_common::{optimize, parse};

const GRAPH: &str = "graph t {
  input %x: f32[1, 6, 7, 9]
  param %dw.weight: f32[6, 1, 7, 7] = uniform(0.2)
  param %dw.bias: f32[6] = uniform(0.2)
  %dw = conv2d(%x, %dw.weight, %dw.bias) {bias=true, dilation=[1, 1], groups=6, k=[7, 7], out=6, pad=[3, 3], s=[1, 1]}: f32[1, 6, 7, 9]
  param %ln.weight: f32[6] = ones
  param %ln.bias: f32[6] = zeros
  %ln = layer_norm2d(%dw, %ln.weight, %ln.bias) {affine=true, eps=1e-6}: f32[1, 6, 7, 9]
  param %fc.weight: f32[6, 6, 1, 1] = uniform(0.4)
  param %fc.bias: f32[6] = uniform(0.4)
  %fc = conv2d(%ln, %fc.weight, %fc.bias) {bias=true, dilation=[1, 1], groups=1, k=[1, 1], out=6, pad=[0, 0], s=[1, 1]}: f32[1, 6, 7, 9]
  param %gamma: f32[6] = uniform(1.0)
  %gs = reshape(%gamma) {shape=[6, 1, 1]}: f32[6, 1, 1]
  %scaled = mul(%fc, %gs): f32[1, 6, 7, 9]
  %res = add(%scaled, %x): f32[1, 6, 7, 9]
  %t = tanh(%res): f32[1, 6, 7, 9]
  %ew = silu(%t): f32[1, 6, 7, 9]
  %sm = softmax(%ew) {axis=-1}: f32[1, 6, 7, 9]
  param %l.weight: f32[9] = ones
  param %l.bias: f32[9] = zeros
  %lnl = layer_norm(%sm, %l.weight, %l.bias) {affine=true, eps=1e-5}: f32[1, 6, 7, 9]
  %pool = max_pool2d(%lnl) {ceil_mode=true, k=[3, 3], pad=[1, 1], s=[2, 2]}: f32[1, 6, 4, 5]
  %perm = permute(%pool) {dims=[0, 2, 3, 1]}: f32[1, 4, 5, 6]
  %e1 = sigmoid(%x): f32[1, 6, 7, 9]
  %e2 = mul(%e1, %gs): f32[1, 6, 7, 9]
  %e3 = hardswish(%e2): f32[1, 6, 7, 9]
  output %out = %perm
  output %o2 = %e3
}
";

/// Multi-contraction groups: attention in the TNT layout, and a convolution over a concat of
/// an input and a resized one.
const GROUPS: &str = "graph t {
  input %q: f32[1, 5, 2, 6]
  input %k: f32[1, 7, 2, 6]
  input %v: f32[1, 7, 2, 3]
  input %r: f32[1, 5, 2, 3]
  %qh = permute(%q) {dims=[0, 2, 1, 3]}: f32[1, 2, 5, 6]
  %kt = permute(%k) {dims=[0, 2, 3, 1]}: f32[1, 2, 6, 7]
  %vh = permute(%v) {dims=[0, 2, 1, 3]}: f32[1, 2, 7, 3]
  param %s: f32[] = uniform(1.0)
  %scores = matmul(%qh, %kt): f32[1, 2, 5, 7]
  %logits = mul(%scores, %s): f32[1, 2, 5, 7]
  %attn = softmax(%logits) {axis=-1}: f32[1, 2, 5, 7]
  %o = matmul(%attn, %vh): f32[1, 2, 5, 3]
  %ot = permute(%o) {dims=[0, 2, 1, 3]}: f32[1, 5, 2, 3]
  %res = add(%ot, %r): f32[1, 5, 2, 3]
  input %x: f32[1, 3, 6, 5]
  input %y: f32[1, 2, 3, 3]
  %up = upsample(%y) {align_corners=false, mode=\"bilinear\", scale=none, size=[6, 5]}: f32[1, 2, 6, 5]
  %cat = concat(%x, %up) {axis=1}: f32[1, 5, 6, 5]
  param %c.weight: f32[4, 5, 3, 3] = uniform(0.3)
  param %c.bias: f32[4] = uniform(0.3)
  %c = conv2d(%cat, %c.weight, %c.bias) {bias=true, dilation=[1, 1], groups=1, k=[3, 3], out=4, pad=[1, 1], s=[1, 1]}: f32[1, 4, 6, 5]
  %act = relu(%c): f32[1, 4, 6, 5]
  output %out = %res
  output %o2 = %act
}
";

fn kernel_text(name: &str) -> String {
    kernel_text_in(GRAPH, name)
}

/// The kernel of node `name` of `graph` after -O2, as text.
fn kernel_text_in(graph: &str, name: &str) -> String {
    let mut g = parse(graph);
    optimize(&mut g);
    let id = g
        .find(name)
        .unwrap_or_else(|| panic!("no node `{name}` after -O2"));
    print_kernel(&lower_node(&g, id).expect("lowers"))
}

#[test]
fn elementwise_group() {
    insta::assert_snapshot!(kernel_text("e1"));
}

#[test]
fn dwconv_norm_group() {
    insta::assert_snapshot!(kernel_text("dw"));
}

#[test]
fn epilogue_group() {
    insta::assert_snapshot!(kernel_text("fc"));
}

#[test]
fn softmax() {
    insta::assert_snapshot!(kernel_text("sm"));
}

#[test]
fn layer_norm() {
    insta::assert_snapshot!(kernel_text("lnl"));
}

#[test]
fn max_pool() {
    insta::assert_snapshot!(kernel_text("pool"));
}

#[test]
fn permute() {
    insta::assert_snapshot!(kernel_text("perm"));
}

#[test]
fn attention_group() {
    insta::assert_snapshot!(kernel_text_in(GROUPS, "scores"));
}

#[test]
fn fff_group() {
    insta::assert_snapshot!(kernel_text_in(GROUPS, "c"));
}
