//! Random graphs through the optimiser: proptest builds random, well-shaped models that are
//! not in the repository, runs each through the interpreter unoptimised and after the -O1
//! and -O2 pipelines (same seeded weights and inputs), and requires the same outputs.
//!
//! **Why `.bb` source and not Graph IR.** A case is generated as `.bb` text and elaborated.
//! The elaborator infers every shape and creates every parameter with its attributes and
//! defaults, so a motif is one line of source where the IR would need the full attribute
//! set and a `param` line per owned tensor; and the graphs come out exactly as real specs
//! produce them (scalar operands as `full`, `chunk` as slices, `seq` and shared layer
//! values). The generator still tracks shapes (a few lines per op), so every case
//! elaborates; one that does not is a generator bug and fails the test with its text.
//!
//! **What is generated.** A case is a list of motifs, each drawn from a fixed stock of
//! numbers so that proptest shrinks a failure toward fewer motifs and simpler choices (0 is
//! always the first, simplest option). The motifs are the shapes the passes look for:
//! elementwise chains whose values get second users or become graph outputs;
//! conv2d/conv1d/linear/matmul/conv_transpose2d with an epilogue (activation, layer scale,
//! residual); depthwise conv + `layer_norm2d` or `permute` + `layer_norm` (ConvNeXt blocks);
//! conv + `batch_norm2d`; concat of resized tensors + conv, dense blocks (each layer over
//! the concatenation of every earlier output), FPN and BiFPN fusion; attention
//! (`softmax(matmul * scale)` then `matmul`, one or two heads, optional bias); reshape and
//! permute chains; dropout / drop_path / identity; `haar_dwt` + conv; `full`, `const` and
//! `coord_grid` constants; repeated expressions and shared layer values; pooling,
//! squeeze-excite, reductions and norms. Any motif may read any earlier value of a fitting
//! shape, so values get several users across motifs.
//!
//! **Weights.** `weights::init_weights` with the case's seed, except that tensors whose
//! default initialisation is a constant (norm weights and biases, BatchNorm running
//! statistics, `fill` parameters) get U(-0.5, 0.5) added, so that BatchNorm folding and
//! norm fusions are checked on non-trivial values. Inputs are N(0, 1).
//!
//! **Checks.** At -O1 and -O2: no pass panics or breaks the verifier; every output agrees
//! with the unoptimised graph within 1e-5 relative to the output's largest magnitude
//! (floor 1), as in `tests/optimize.rs`, and non-finite values must match exactly; the
//! kernel count and intermediate bytes never grow (`stats::stats`); no dropout or drop_path
//! is left; and the optimised graph verifies and prints, parses back and prints
//! identically. Norms get an `eps` of at least 1e-3 (see [`NORM_EPS`]) so that rounding
//! differences stay within the tolerance. Bugs the generator found are kept as fixed cases
//! (`found_bugs_stay_fixed`). The -O2 graph is also compiled to the CPU executable
//! (bounds-checked JIT code, two threads) and must agree within [`JIT_TOLERANCE`];
//! `random_graphs_run_on_the_gpu` runs 12 cases (`BBC_GPU_CASES`) through the WGSL launch
//! plan on wgpu within the same bound.
//!
//! 64 cases by default (under a second); `PROPTEST_CASES` scales it. A second test checks
//! that the generator keeps reaching every pass: each -O2 pass must change at least one of
//! 200 fixed cases (`--nocapture` prints how many).

use bbc::compiler::codegen::cpu::plan::{compile, ExecOptions};
use bbc::compiler::codegen::cpu::Options as CodegenOptions;
use bbc::compiler::elab::{Options, Program};
use bbc::compiler::ops::{format_float, Init};
use bbc::compiler::{interp, ir, passes, stats, weights};
use bbc::runtime::{Rng, Tensor};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestCaseError;
use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};

type Shape = Vec<usize>;

/// Relative tolerance of optimised against unoptimised outputs (as in `tests/optimize.rs`).
const TOLERANCE: f32 = 1e-5;
/// Relative tolerance of the CPU executable (as in `tests/cpu_backend.rs`).
const JIT_TOLERANCE: f32 = 2e-5;

/// How many numbers each motif may draw.
const PICKS_PER_MOTIF: usize = 40;

// ---------------------------------------------------------------------------------------
// Drawing choices
// ---------------------------------------------------------------------------------------

/// The numbers one motif draws its choices from, in order. Every decision reads the next
/// number, so shrinking a number toward 0 shrinks that decision toward its first option.
struct Picks<'a> {
    raw: &'a [u32],
    at: usize,
}

impl Picks<'_> {
    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        let v = self.raw.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        v as usize % n
    }

    /// True with `percent`% probability; false when the number drawn is 0.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) >= 100 - percent
    }

    fn of<T: Copy>(&mut self, options: &[T]) -> T {
        options[self.below(options.len())]
    }

    /// A random permutation of `0..n`.
    fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, self.below(i + 1));
        }
        p
    }
}

// ---------------------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------------------

/// A tensor bound in the generated model: its `.bb` name and its shape.
#[derive(Clone, Debug)]
struct Val {
    name: String,
    shape: Shape,
}

fn is_image(s: &Shape) -> bool {
    s.len() == 4
}

fn is_tokens(s: &Shape) -> bool {
    s.len() == 3
}

fn list(xs: &[usize]) -> String {
    let items: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// The shape a per-channel parameter or constant needs to broadcast against `s`: `[C, 1, 1]`
/// for an image, the last axis otherwise.
fn channel_shape(s: &Shape) -> Shape {
    if is_image(s) {
        vec![s[1], 1, 1]
    } else {
        vec![*s.last().expect("rank >= 1")]
    }
}

/// The permutation that swaps the last two axes of a rank-`r` tensor.
fn transpose_last(r: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..r).collect();
    p.swap(r - 2, r - 1);
    p
}

/// The `eps` of LayerNorm and GroupNorm. A norm divides by sqrt(var + eps), so over a
/// near-constant input (common after a ReLU in random graphs) it magnifies last-bit
/// differences by up to 1/sqrt(eps): 1e-3 bounds that to about 32, which keeps [`TOLERANCE`]
/// meaningful. (BatchNorm divides by its running variance, which is at least 0.5 here.)
const NORM_EPS: &[&str] = &["1e-3", "1e-2"];

/// Pointwise activations and clamps; `$` is the operand.
const ACTIVATIONS: &[&str] = &[
    "relu($)",
    "gelu($)",
    "silu($)",
    "sigmoid($)",
    "tanh($)",
    "hardswish($)",
    "relu6($)",
    "gelu($, approximate=\"tanh\")",
    "elu($, alpha=0.5)",
    "clamp($, min=-1.0, max=1.5)",
    "clamp($, min=0.0)",
    "-$",
    "abs($)",
];

/// Math kept finite on any input, so a NaN never hides a difference.
const BOUNDED_MATH: &[&str] = &[
    "exp(clamp($, max=2.0))",
    "sqrt(abs($) + 0.25)",
    "log(abs($) + 0.5)",
    "rsqrt(abs($) + 0.5)",
    "(clamp(abs($), max=3.0) + 0.5) ** 1.5",
    "$ / (abs($) + 1.0)",
];

/// Scalar operands, including the identities `simplify` removes.
const SCALAR_OPS: &[&str] = &[
    "$ * 0.5", "$ + 0.25", "2.0 * $", "$ - 1.0", "$ / 4.0", "$ * 1.0", "$ + 0.0", "$ - 0.0",
    "1.0 * $", "0.0 + $", "$ / 1.0",
];

/// Binary ops on two values of one shape; `$a` and `$b` are the operands.
const BINARY_OPS: &[&str] = &[
    "$a + $b",
    "$a - $b",
    "$a * $b",
    "maximum($a, $b)",
    "minimum($a, $b)",
    "$a / (abs($b) + 1.0)",
];

/// Builds the body of the generated model, tracking the shape of every value.
struct Gen {
    lines: Vec<String>,
    /// Every tensor bound so far, the model inputs first.
    vals: Vec<Val>,
    /// Parameter-free expressions bound so far: repeating one is a common subexpression.
    pure: Vec<(String, Shape)>,
    outputs: Vec<String>,
    counter: usize,
}

impl Gen {
    fn new(inputs: &[(&str, Shape)]) -> Gen {
        let mut g = Gen {
            lines: Vec::new(),
            vals: Vec::new(),
            pure: Vec::new(),
            outputs: Vec::new(),
            counter: 0,
        };
        for (name, shape) in inputs {
            g.lines.push(format!("input {name}: f32{};", list(shape)));
            g.vals.push(Val {
                name: name.to_string(),
                shape: shape.clone(),
            });
        }
        g
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }

    /// Binds `expr`, of shape `shape`, to a new name.
    fn bind(&mut self, expr: String, shape: Shape) -> Val {
        let name = self.fresh("v");
        self.lines.push(format!("{name} = {expr};"));
        let v = Val { name, shape };
        self.vals.push(v.clone());
        v
    }

    /// [`Gen::bind`] for an expression that owns no parameters, so that repeating it later
    /// makes a common subexpression.
    fn bind_pure(&mut self, expr: String, shape: Shape) -> Val {
        self.pure.push((expr.clone(), shape.clone()));
        self.bind(expr, shape)
    }

    /// Declares a learned tensor; returns its name.
    fn param(&mut self, shape: &[usize], init: &str) -> String {
        let name = self.fresh("p");
        self.lines
            .push(format!("param {name}: f32{} = {init};", list(shape)));
        name
    }

    /// Makes `v` a graph output with `percent`% probability (a fusion chain must stop there).
    fn maybe_output(&mut self, p: &mut Picks, v: &Val, percent: usize) {
        if p.chance(percent) && !self.outputs.contains(&v.name) {
            self.outputs.push(v.name.clone());
        }
    }

    /// A value that satisfies `want`: the latest one, or (half the time) any.
    fn pick_where(&self, p: &mut Picks, want: impl Fn(&Val) -> bool) -> Option<Val> {
        let fits: Vec<&Val> = self.vals.iter().filter(|v| want(v)).collect();
        let last = fits.last()?;
        Some(if p.chance(50) {
            fits[p.below(fits.len())].clone()
        } else {
            (*last).clone()
        })
    }

    /// A value whose shape satisfies `want`, as [`Gen::pick_where`].
    fn pick(&self, p: &mut Picks, want: impl Fn(&Shape) -> bool) -> Option<Val> {
        self.pick_where(p, |v| want(&v.shape))
    }

    /// Any value of rank 2 to 4.
    fn pick_any(&self, p: &mut Picks) -> Val {
        self.pick(p, |s| (2..=4).contains(&s.len()))
            .expect("the inputs are always there")
    }

    fn pick_image(&self, p: &mut Picks) -> Val {
        self.pick(p, is_image)
            .expect("the image input is always there")
    }

    fn pick_tokens(&self, p: &mut Picks) -> Val {
        self.pick(p, is_tokens)
            .expect("the token input is always there")
    }

    /// Another value of `x`'s shape; `x` itself when there is none, or now and then (an op
    /// that reads one value twice).
    fn pick_same_shape(&self, p: &mut Picks, x: &Val) -> Val {
        if p.chance(10) {
            return x.clone();
        }
        self.pick_where(p, |v| v.shape == x.shape && v.name != x.name)
            .unwrap_or_else(|| x.clone())
    }

    // -----------------------------------------------------------------------------------
    // Building pieces
    // -----------------------------------------------------------------------------------

    /// One elementwise op on `h`.
    fn pointwise(&mut self, p: &mut Picks, h: &Val) -> Val {
        let expr = match p.below(5) {
            0 => p.of(ACTIVATIONS).replace('$', &h.name),
            1 => p.of(BOUNDED_MATH).replace('$', &h.name),
            2 => {
                let other = self.pick_same_shape(p, h);
                let (a, b) = if p.chance(30) {
                    (&other.name, &h.name)
                } else {
                    (&h.name, &other.name)
                };
                p.of(BINARY_OPS).replace("$a", a).replace("$b", b)
            }
            3 => p.of(SCALAR_OPS).replace('$', &h.name),
            _ => {
                let scale = self.param(&channel_shape(&h.shape), "uniform(1.0)");
                p.of(&["$ * #", "$ + #", "# * $"])
                    .replace('#', &scale)
                    .replace('$', &h.name)
            }
        };
        self.bind_pure(expr, h.shape.clone())
    }

    /// Arguments of a conv2d over `shape` (without the input) and the result shape; `same`
    /// keeps the spatial size.
    fn conv_args(
        &self,
        p: &mut Picks,
        shape: &Shape,
        out: Option<usize>,
        same: bool,
    ) -> (String, Shape) {
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
        let (k, s, pad) = match p.below(5) {
            0 => (1, 1, 0),
            1 => (3, 1, 1),
            2 if !same && h.min(w) >= 3 => (3, 1 + p.below(2), 0),
            3 if !same && h.is_multiple_of(2) && w.is_multiple_of(2) => (2, 2, 0),
            4 if !same => (3, 2, 1),
            _ => (5, 1, 2),
        };
        let out = out.unwrap_or_else(|| p.of(&[c, 4, 8, 6]));
        let groups = match p.below(4) {
            1 if out == c => c,
            2 if c.is_multiple_of(2) && out.is_multiple_of(2) => 2,
            _ => 1,
        };
        let bias = !p.chance(30);
        let args = format!("out={out}, k={k}, s={s}, pad={pad}, groups={groups}, bias={bias}");
        let size = |x: usize| (x + 2 * pad - k) / s + 1;
        (args, vec![n, out, size(h), size(w)])
    }

    fn conv(&mut self, p: &mut Picks, x: &Val, out: Option<usize>, same: bool) -> Val {
        let (args, shape) = self.conv_args(p, &x.shape, out, same);
        self.bind(format!("conv2d({}, {args})", x.name), shape)
    }

    /// A transposed convolution (a decoder's upsampling) of a small image, with output
    /// padding, dilation and groups; a larger image keeps its size (3x3, stride 1).
    fn conv_transpose(&mut self, p: &mut Picks) -> Val {
        let small = self.pick(p, |s| is_image(s) && s[2] * s[3] <= 64);
        let (x, (k, s, pad, dilation)) = match small {
            Some(x) => (
                x,
                p.of(&[
                    (3, 1, 1, 1),
                    (2, 2, 0, 1),
                    (4, 2, 1, 1),
                    (3, 2, 1, 2),
                    (1, 3, 0, 1),
                ]),
            ),
            None => (self.pick_image(p), (3, 1, 1, 1)),
        };
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let output_padding = p.below(s.max(dilation));
        let out = p.of(&[c, 4, 6]);
        let groups = if p.chance(30) && c.is_multiple_of(2) && out.is_multiple_of(2) {
            2
        } else {
            1
        };
        let bias = !p.chance(30);
        let size = |x: usize| (x - 1) * s + dilation * (k - 1) + output_padding + 1 - 2 * pad;
        self.bind(
            format!(
                "conv_transpose2d({}, out={out}, k={k}, s={s}, pad={pad}, dilation={dilation}, \
                 output_padding={output_padding}, groups={groups}, bias={bias})",
                x.name
            ),
            vec![n, out, size(h), size(w)],
        )
    }

    fn linear(&mut self, p: &mut Picks, x: &Val, out: Option<usize>) -> Val {
        let last = *x.shape.last().expect("rank >= 1");
        let out = out.unwrap_or_else(|| p.of(&[last, 4, 8, 3]));
        let bias = !p.chance(30);
        let mut shape = x.shape.clone();
        *shape.last_mut().expect("rank >= 1") = out;
        self.bind(format!("linear({}, out={out}, bias={bias})", x.name), shape)
    }

    /// Up to three epilogue ops after `anchor`: activation, layer scale, residual add.
    fn epilogue(&mut self, p: &mut Picks, anchor: Val) -> Val {
        let mut h = anchor;
        for _ in 0..p.below(4) {
            h = match p.below(4) {
                0 => {
                    let expr = p.of(ACTIVATIONS).replace('$', &h.name);
                    self.bind_pure(expr, h.shape.clone())
                }
                1 => {
                    let gamma = self.param(&channel_shape(&h.shape), "fill(0.1)");
                    self.bind_pure(format!("{} * {gamma}", h.name), h.shape.clone())
                }
                2 => {
                    let residual = self.pick_same_shape(p, &h);
                    self.bind_pure(format!("{} + {}", residual.name, h.name), h.shape.clone())
                }
                _ => self.pointwise(p, &h),
            };
            self.maybe_output(p, &h, 10);
        }
        h
    }

    // -----------------------------------------------------------------------------------
    // Motifs
    // -----------------------------------------------------------------------------------

    fn motif(&mut self, which: usize, p: &mut Picks) {
        match which {
            0 => self.elementwise_chain(p),
            1 => self.contraction(p),
            2 => self.dwconv_norm(p),
            3 => self.conv_batch_norm(p),
            4 => self.merge(p),
            5 => self.attention(p),
            6 => self.layout(p),
            7 => self.identities(p),
            8 => self.haar(p),
            9 => self.constants(p),
            10 => self.shared(p),
            _ => self.pool_and_norm(p),
        }
    }

    fn elementwise_chain(&mut self, p: &mut Picks) {
        let mut h = self.pick_any(p);
        for _ in 0..1 + p.below(4) {
            h = self.pointwise(p, &h);
            self.maybe_output(p, &h, 15);
        }
    }

    fn contraction(&mut self, p: &mut Picks) {
        let anchor = match p.below(6) {
            0 => {
                let x = self.pick_image(p);
                self.conv(p, &x, None, false)
            }
            1 => {
                let x = self.pick_any(p);
                self.linear(p, &x, None)
            }
            2 => {
                let a = self.pick_any(p);
                let r = a.shape.len();
                let k = a.shape[r - 1];
                let mut shape = a.shape.clone();
                let other = self
                    .pick(p, |s| {
                        s.len() == r && s[..r - 2] == a.shape[..r - 2] && s[r - 1] == k
                    })
                    .filter(|_| p.chance(50));
                let expr = match other {
                    Some(b) => {
                        shape[r - 1] = b.shape[r - 2];
                        let t = list(&transpose_last(r));
                        format!("matmul({}, permute({}, {t}))", a.name, b.name)
                    }
                    None => {
                        let n = p.of(&[k, 4, 2]);
                        shape[r - 1] = n;
                        let b = self.param(&[k, n], "uniform(0.5)");
                        format!("matmul({}, {b})", a.name)
                    }
                };
                self.bind(expr, shape)
            }
            3 => {
                // A pointwise MLP over channels-last pixels, as ConvNeXt's Linear variant.
                let x = self.pick_image(p);
                let nhwc = self.bind_pure(
                    format!("permute({}, [0, 2, 3, 1])", x.name),
                    vec![x.shape[0], x.shape[2], x.shape[3], x.shape[1]],
                );
                let lin = self.linear(p, &nhwc, None);
                let end = self.epilogue(p, lin);
                let s = &end.shape;
                self.bind_pure(
                    format!("permute({}, [0, 3, 1, 2])", end.name),
                    vec![s[0], s[3], s[1], s[2]],
                );
                return;
            }
            5 => self.conv_transpose(p),
            _ => {
                // conv1d over tokens read as [N, C, L].
                let t = self.pick_tokens(p);
                let out = p.of(&[t.shape[1], 4]);
                let (k, pad) = p.of(&[(1, 0), (3, 1)]);
                self.bind(
                    format!("conv1d({}, out={out}, k={k}, pad={pad})", t.name),
                    vec![t.shape[0], out, t.shape[2]],
                )
            }
        };
        self.maybe_output(p, &anchor, 10);
        self.epilogue(p, anchor);
    }

    /// A depthwise conv and a LayerNorm over its channels, up to a whole ConvNeXt block.
    fn dwconv_norm(&mut self, p: &mut Picks) {
        let x = self.pick_image(p);
        let c = x.shape[1];
        let k = p.of(&[3, 7, 5, 1]);
        let bias = !p.chance(30);
        let dw = self.bind(
            format!(
                "conv2d({}, out={c}, k={k}, pad={}, groups={c}, bias={bias})",
                x.name,
                k / 2
            ),
            x.shape.clone(),
        );
        self.maybe_output(p, &dw, 10);
        let eps = p.of(NORM_EPS);
        let affine = !p.chance(20);
        if p.chance(50) {
            let norm = self.bind(
                format!("layer_norm2d({}, eps={eps}, affine={affine})", dw.name),
                x.shape.clone(),
            );
            if p.chance(50) {
                let fc1 = self.conv(p, &norm, Some(4 * c), true);
                let act = self.bind_pure(format!("gelu({})", fc1.name), fc1.shape.clone());
                let fc2 = self.conv(p, &act, Some(c), true);
                self.finish_block(p, &x, fc2);
            }
        } else {
            let s = &x.shape;
            let nhwc = self.bind_pure(
                format!("permute({}, [0, 2, 3, 1])", dw.name),
                vec![s[0], s[2], s[3], s[1]],
            );
            let norm = self.bind(
                format!("layer_norm({}, eps={eps}, affine={affine})", nhwc.name),
                nhwc.shape.clone(),
            );
            if p.chance(50) {
                let fc1 = self.linear(p, &norm, Some(4 * c));
                let act = self.bind_pure(format!("gelu({})", fc1.name), fc1.shape.clone());
                let fc2 = self.linear(p, &act, Some(c));
                let back = self.bind_pure(
                    format!("permute({}, [0, 3, 1, 2])", fc2.name),
                    x.shape.clone(),
                );
                self.finish_block(p, &x, back);
            }
        }
    }

    /// ConvNeXt's end of block: layer scale, drop_path and the residual add.
    fn finish_block(&mut self, p: &mut Picks, x: &Val, y: Val) {
        let gamma = self.param(&[x.shape[1]], "fill(0.000001)");
        let scaled = self.bind_pure(
            format!("{} * reshape({gamma}, [{}, 1, 1])", y.name, x.shape[1]),
            y.shape.clone(),
        );
        let sum = self.bind_pure(
            format!("{} + drop_path({}, p=0.1)", x.name, scaled.name),
            x.shape.clone(),
        );
        self.maybe_output(p, &sum, 30);
    }

    fn conv_batch_norm(&mut self, p: &mut Picks) {
        let x = self.pick_image(p);
        let eps = p.of(&["1e-5", "1e-3"]);
        let (args, shape) = self.conv_args(p, &x.shape, None, false);
        if p.chance(25) {
            // The same thing as a `seq`.
            let relu = if p.chance(50) { " relu();" } else { "" };
            self.bind(
                format!(
                    "{} |> seq {{ conv2d({args}); batch_norm2d(eps={eps});{relu} }}",
                    x.name
                ),
                shape,
            );
            return;
        }
        let conv = self.bind(format!("conv2d({}, {args})", x.name), shape.clone());
        let bn = self.bind(format!("batch_norm2d({}, eps={eps})", conv.name), shape);
        if p.chance(15) {
            // A second user of the conv: folding must not fire.
            self.bind_pure(format!("{} + {}", conv.name, bn.name), bn.shape.clone());
        }
        if p.chance(50) {
            self.bind_pure(format!("relu({})", bn.name), bn.shape.clone());
        }
    }

    /// A tensor of batch `n` and size `h x w` to concatenate with others: an earlier value
    /// of that size, one resized or pooled to it, a coordinate grid or a constant. Returns
    /// its expression and channel count.
    fn resized(&self, p: &mut Picks, n: usize, h: usize, w: usize) -> (String, usize) {
        let same_batch = |s: &Shape| is_image(s) && s[0] == n;
        match p.below(5) {
            0 => match self.pick(p, |s| same_batch(s) && s[2] == h && s[3] == w) {
                Some(v) => (v.name, v.shape[1]),
                None => (format!("full([{n}, 1, {h}, {w}], value=0.5)"), 1),
            },
            1 => {
                let v = self.pick(p, same_batch).expect("a value of batch `n` exists");
                let expr = if v.shape[2] * 2 == h && v.shape[3] * 2 == w && p.chance(50) {
                    format!("upsample({}, scale=2)", v.name)
                } else {
                    let mode = p.of(&[
                        "mode=\"nearest\"",
                        "mode=\"bilinear\"",
                        "mode=\"bilinear\", align_corners=true",
                    ]);
                    format!("upsample({}, size=({h}, {w}), {mode})", v.name)
                };
                (expr, v.shape[1])
            }
            2 => match self.pick(p, |s| same_batch(s) && s[2] >= h && s[3] >= w) {
                Some(v) if v.shape[2] == 2 * h && v.shape[3] == 2 * w => {
                    let pool = p.of(&["avg_pool2d", "max_pool2d"]);
                    (format!("{pool}({}, k=2)", v.name), v.shape[1])
                }
                Some(v) => (
                    format!("adaptive_avg_pool2d({}, size=({h}, {w}))", v.name),
                    v.shape[1],
                ),
                None => (format!("full([{n}, 2, {h}, {w}], value=-0.5)"), 2),
            },
            3 => (
                format!(
                    "expand(reshape(coord_grid(h={h}, w={w}), [1, 2, {h}, {w}]), [{n}, 2, {h}, {w}])"
                ),
                2,
            ),
            _ => (format!("full([{n}, 1, {h}, {w}], value=0.5)"), 1),
        }
    }

    /// Multi-level fusion: concat of resized tensors + conv, or FPN / BiFPN top-down fusion.
    fn merge(&mut self, p: &mut Picks) {
        let a = self.pick_image(p);
        let (n, c, h, w) = (a.shape[0], a.shape[1], a.shape[2], a.shape[3]);
        match p.below(4) {
            3 => {
                // A dense block (DenseNet, RDN): each layer reads the concatenation of the
                // block input and every earlier layer's output, a growing chain.
                let mut parts = vec![a.name.clone()];
                let mut channels = c;
                let mut input = a.clone();
                for _ in 0..2 + p.below(3) {
                    let g = p.of(&[2, 4]);
                    let conv = self.bind(
                        format!("conv2d({}, out={g}, k=3, pad=1)", input.name),
                        vec![n, g, h, w],
                    );
                    let layer = self.bind_pure(format!("relu({})", conv.name), conv.shape.clone());
                    parts.push(layer.name.clone());
                    channels += g;
                    input = self.bind_pure(
                        format!("concat([{}], axis=1)", parts.join(", ")),
                        vec![n, channels, h, w],
                    );
                }
                let fused = self.conv(p, &input, None, false);
                self.epilogue(p, fused);
            }
            0 => {
                let mut parts = vec![a.name.clone()];
                let mut channels = c;
                for _ in 0..1 + p.below(2) {
                    let (expr, ch) = self.resized(p, n, h, w);
                    parts.push(expr);
                    channels += ch;
                }
                let cat = self.bind_pure(
                    format!("concat([{}], axis=1)", parts.join(", ")),
                    vec![n, channels, h, w],
                );
                let conv = self.conv(p, &cat, None, false);
                self.epilogue(p, conv);
            }
            bifpn => {
                let d = p.of(&[4, c]);
                let coarse = self
                    .pick(p, |s| is_image(s) && s[0] == n)
                    .expect("`a` itself qualifies");
                let lat_fine = self.conv(p, &a, Some(d), true);
                let lat_coarse = self.bind(
                    format!("conv2d({}, out={d}, k=1)", coarse.name),
                    vec![n, d, coarse.shape[2], coarse.shape[3]],
                );
                let top_down = self.bind_pure(
                    format!(
                        "upsample({}, size=({h}, {w}), mode=\"nearest\")",
                        lat_coarse.name
                    ),
                    vec![n, d, h, w],
                );
                let fused = if bifpn == 1 {
                    format!("{} + {}", lat_fine.name, top_down.name)
                } else {
                    let raw = self.param(&[2], "ones()");
                    let wts = self.bind_pure(format!("relu({raw})"), vec![2]);
                    let den =
                        self.bind_pure(format!("sum({}, axes=[0]) + 0.0001", wts.name), vec![]);
                    let term = |v: &str, i: usize| {
                        format!(
                            "{v} * slice({}, axis=0, start={i}, end={}) / {}",
                            wts.name,
                            i + 1,
                            den.name
                        )
                    };
                    format!("{} + {}", term(&lat_fine.name, 0), term(&top_down.name, 1))
                };
                let fused = self.bind_pure(fused, vec![n, d, h, w]);
                let out = self.conv(p, &fused, Some(d), true);
                self.maybe_output(p, &out, 30);
            }
        }
    }

    fn attention(&mut self, p: &mut Picks) {
        let t = self.pick_tokens(p);
        let (b, n, d) = (t.shape[0], t.shape[1], t.shape[2]);
        let heads = if d.is_multiple_of(2) && p.chance(40) {
            2
        } else {
            1
        };
        let dh = d / heads;
        let (q, k, v) = match p.below(3) {
            0 => {
                let q = self.linear(p, &t, Some(d));
                let k = self.linear(p, &t, Some(d));
                let v = self.linear(p, &t, Some(d));
                (q, k, v)
            }
            1 => {
                let qkv = self.linear(p, &t, Some(3 * d));
                let names = [self.fresh("q"), self.fresh("k"), self.fresh("v")];
                self.lines.push(format!(
                    "({}, {}, {}) = chunk({}, 3, axis=-1);",
                    names[0], names[1], names[2], qkv.name
                ));
                let [q, k, v] = names.map(|name| Val {
                    name,
                    shape: vec![b, n, d],
                });
                self.vals.extend([q.clone(), k.clone(), v.clone()]);
                (q, k, v)
            }
            _ => (t.clone(), t.clone(), t.clone()),
        };
        let (qh, kt, vh) = if heads == 1 {
            let kt = self.bind_pure(format!("permute({}, [0, 2, 1])", k.name), vec![b, d, n]);
            (q, kt, v)
        } else {
            let split = |x: &Val, dims: &str| {
                format!(
                    "permute(reshape({}, [{b}, {n}, {heads}, {dh}]), {dims})",
                    x.name
                )
            };
            let qh = self.bind_pure(split(&q, "[0, 2, 1, 3]"), vec![b, heads, n, dh]);
            let kt = self.bind_pure(split(&k, "[0, 2, 3, 1]"), vec![b, heads, dh, n]);
            let vh = self.bind_pure(split(&v, "[0, 2, 1, 3]"), vec![b, heads, n, dh]);
            (qh, kt, vh)
        };
        let mut scores_shape = qh.shape.clone();
        *scores_shape.last_mut().expect("rank 3 or 4") = n;
        let scores = match p.below(3) {
            0 => format!("matmul({}, {}) * {dh} ** -0.5", qh.name, kt.name),
            1 => format!("matmul({} * {dh} ** -0.5, {})", qh.name, kt.name),
            _ => format!(
                "matmul({}, {}) / {}",
                qh.name,
                kt.name,
                format_float((dh as f64).sqrt())
            ),
        };
        let mut scores = self.bind_pure(scores, scores_shape.clone());
        if p.chance(25) {
            let bias = self.param(&[n, n], "uniform(1.0)");
            scores = self.bind_pure(format!("{} + {bias}", scores.name), scores_shape);
        }
        let attn = self.bind_pure(
            format!("softmax({}, axis=-1)", scores.name),
            scores.shape.clone(),
        );
        self.maybe_output(p, &attn, 10);
        let mut o = self.bind_pure(
            format!("matmul({}, {})", attn.name, vh.name),
            qh.shape.clone(),
        );
        if heads > 1 {
            o = self.bind_pure(
                format!(
                    "reshape(permute({}, [0, 2, 1, 3]), [{b}, {n}, {d}])",
                    o.name
                ),
                vec![b, n, d],
            );
        }
        if p.chance(70) {
            o = self.linear(p, &o, Some(d));
        }
        if p.chance(50) {
            let sum = self.bind_pure(format!("{} + {}", t.name, o.name), t.shape.clone());
            self.maybe_output(p, &sum, 30);
        }
    }

    /// Reshape and permute chains, including image <-> token conversions.
    fn layout(&mut self, p: &mut Picks) {
        match p.below(6) {
            0 => {
                let x = self.pick_image(p);
                let s = &x.shape;
                let nhwc = self.bind_pure(
                    format!("permute({}, [0, 2, 3, 1])", x.name),
                    vec![s[0], s[2], s[3], s[1]],
                );
                let mid = if p.chance(50) {
                    self.pointwise(p, &nhwc)
                } else {
                    nhwc
                };
                self.bind_pure(
                    format!("permute({}, [0, 3, 1, 2])", mid.name),
                    x.shape.clone(),
                );
            }
            1 => {
                let x = self.pick_image(p);
                let s = &x.shape;
                let flat = self.bind_pure(
                    format!("flatten({}, start=2)", x.name),
                    vec![s[0], s[1], s[2] * s[3]],
                );
                self.bind_pure(
                    format!("permute({}, [0, 2, 1])", flat.name),
                    vec![s[0], s[2] * s[3], s[1]],
                );
            }
            2 => {
                let t = self.pick_tokens(p);
                let (b, n, d) = (t.shape[0], t.shape[1], t.shape[2]);
                let rows = (1..=n)
                    .rev()
                    .find(|r| r * r <= n && n.is_multiple_of(*r))
                    .unwrap_or(1);
                self.bind_pure(
                    format!(
                        "reshape(permute({}, [0, 2, 1]), [{b}, {d}, {rows}, {}])",
                        t.name,
                        n / rows
                    ),
                    vec![b, d, rows, n / rows],
                );
            }
            3 => {
                let mut v = self.pick_any(p);
                for _ in 0..1 + p.below(3) {
                    let perm = p.permutation(v.shape.len());
                    let shape = perm.iter().map(|&i| v.shape[i]).collect();
                    v = self.bind_pure(format!("permute({}, {})", v.name, list(&perm)), shape);
                }
            }
            4 => {
                let x = self.pick_any(p);
                let total: usize = x.shape.iter().product();
                let first = x.shape[0];
                let flat = self.bind_pure(
                    format!("reshape({}, [{first}, -1])", x.name),
                    vec![first, total / first],
                );
                let back = if p.chance(50) {
                    x.shape.clone()
                } else {
                    vec![total]
                };
                self.bind_pure(format!("reshape({}, {})", flat.name, list(&back)), back);
            }
            _ => {
                let x = self.pick_any(p);
                let c = x.shape[1];
                if c.is_multiple_of(2) && p.chance(50) {
                    let names = [self.fresh("c"), self.fresh("c")];
                    self.lines.push(format!(
                        "({}, {}) = chunk({}, 2, axis=1);",
                        names[0], names[1], x.name
                    ));
                    let mut half = x.shape.clone();
                    half[1] = c / 2;
                    for name in names {
                        self.vals.push(Val {
                            name,
                            shape: half.clone(),
                        });
                    }
                } else {
                    let step = p.of(&[1, 2]);
                    let end = c.div_ceil(2);
                    let mut shape = x.shape.clone();
                    shape[1] = end.div_ceil(step);
                    self.bind_pure(
                        format!("slice({}, axis=1, start=0, end={end}, step={step})", x.name),
                        shape,
                    );
                }
            }
        }
    }

    /// Inference no-ops and ops that leave their input unchanged.
    fn identities(&mut self, p: &mut Picks) {
        let mut v = self.pick_any(p);
        for _ in 0..1 + p.below(3) {
            let r = v.shape.len();
            let same = list(&v.shape);
            let keep = list(&(0..r).collect::<Vec<_>>());
            let expr = match p.below(9) {
                0 => format!("dropout({}, p=0.1)", v.name),
                1 => format!("drop_path({}, p=0.2)", v.name),
                2 => format!("identity({})", v.name),
                3 => format!("reshape({}, {same})", v.name),
                4 => format!("permute({}, {keep})", v.name),
                5 => format!("expand({}, {same})", v.name),
                6 => format!("flatten({}, start=1, end=1)", v.name),
                7 => format!("{} * 1.0", v.name),
                _ => format!("0.0 + {}", v.name),
            };
            v = self.bind_pure(expr, v.shape.clone());
            self.maybe_output(p, &v, 10);
        }
        if p.chance(50) {
            self.pointwise(p, &v);
        }
    }

    /// A Haar DWT followed by a conv (on all bands, or LL alone), or conv + inverse DWT.
    fn haar(&mut self, p: &mut Picks) {
        let mut x = self.pick_image(p);
        if !x.shape[2].is_multiple_of(2) || !x.shape[3].is_multiple_of(2) {
            let s = &x.shape;
            let shape = vec![s[0], s[1], 2 * s[2], 2 * s[3]];
            x = self.bind_pure(format!("upsample({}, scale=2)", x.name), shape);
        }
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let bands = self.bind_pure(
            format!("haar_dwt({})", x.name),
            vec![n, 4 * c, h / 2, w / 2],
        );
        match p.below(4) {
            0 => {
                let conv = self.conv(p, &bands, None, false);
                self.epilogue(p, conv);
            }
            1 => {
                let ll = self.bind_pure(
                    format!(
                        "slice({}, axis=-3, start=0, end={}, step=4)",
                        bands.name,
                        4 * c
                    ),
                    vec![n, c, h / 2, w / 2],
                );
                self.conv(p, &ll, None, false);
            }
            2 => {
                let act = self.pointwise(p, &bands);
                self.conv(p, &act, None, false);
            }
            _ => {
                let out = p.of(&[1, 2]);
                let conv = self.conv(p, &bands, Some(4 * out), true);
                self.bind_pure(format!("haar_idwt({})", conv.name), vec![n, out, h, w]);
            }
        }
    }

    /// `full`, `const` and `coord_grid` constants, and subgraphs computed from them alone.
    fn constants(&mut self, p: &mut Picks) {
        let x = self.pick_any(p);
        let cs = channel_shape(&x.shape);
        match p.below(5) {
            0 => {
                let expr = if p.chance(50) {
                    format!("{} * full([], value=2.0)", x.name)
                } else {
                    format!("{} + full({}, value=0.5)", x.name, list(&cs))
                };
                self.bind_pure(expr, x.shape.clone());
            }
            1 => {
                let k = self.bind_pure(
                    format!("sigmoid(full({}, value=0.3)) * 2.0 + 0.5", list(&cs)),
                    cs.clone(),
                );
                self.bind_pure(format!("{} * {}", x.name, k.name), x.shape.clone());
            }
            2 => {
                let name = self.fresh("k");
                self.lines
                    .push(format!("const {name}: f32{} = fill(0.25);", list(&cs)));
                self.bind_pure(format!("{} + {name}", x.name), x.shape.clone());
            }
            3 => {
                // CoordConv: the pixel coordinates as two more channels.
                let x = self.pick_image(p);
                let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
                let grid = self.bind_pure(
                    format!("reshape(coord_grid(h={h}, w={w}, lo=0.0, hi=1.0), [1, 2, {h}, {w}])"),
                    vec![1, 2, h, w],
                );
                let cat = self.bind_pure(
                    format!(
                        "concat([{}, expand({}, [{n}, 2, {h}, {w}])], axis=1)",
                        x.name, grid.name
                    ),
                    vec![n, c + 2, h, w],
                );
                self.conv(p, &cat, None, false);
            }
            _ => {
                // A value that depends on no input at all.
                let v = self.bind_pure("exp(full([2, 3], value=0.5)) * 2.0".into(), vec![2, 3]);
                self.maybe_output(p, &v, 50);
            }
        }
    }

    /// Common subexpressions: a repeated expression, or one layer value applied twice.
    fn shared(&mut self, p: &mut Picks) {
        if !self.pure.is_empty() && p.chance(50) {
            let n = self.pure.len();
            let (expr, shape) = self.pure[n - 1 - p.below(n.min(4))].clone();
            self.bind_pure(expr, shape);
            return;
        }
        let layer = self.fresh("layer");
        let a = self
            .pick(p, |s| is_image(s) || is_tokens(s))
            .expect("inputs exist");
        let shape = if is_image(&a.shape) {
            let (args, shape) = self.conv_args(p, &a.shape, None, false);
            self.lines.push(format!("{layer} = conv2d({args});"));
            shape
        } else {
            let out = p.of(&[4, 8]);
            self.lines.push(format!("{layer} = linear(out={out});"));
            let mut s = a.shape.clone();
            s[2] = out;
            s
        };
        let b = self.pick_same_shape(p, &a);
        let first = self.bind(format!("{layer}({})", a.name), shape.clone());
        let second = self.bind(format!("{} |> {layer}", b.name), shape.clone());
        self.bind_pure(format!("{} + {}", first.name, second.name), shape);
    }

    fn pool_and_norm(&mut self, p: &mut Picks) {
        let x = self.pick_image(p);
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        match p.below(6) {
            0 => {
                // Squeeze-excite.
                let s = self.bind_pure(
                    format!("mean({}, axes=[2, 3], keepdim=true)", x.name),
                    vec![n, c, 1, 1],
                );
                let fc1 = self.bind(
                    format!("conv2d({}, out={}, k=1)", s.name, c.div_ceil(2)),
                    vec![n, c.div_ceil(2), 1, 1],
                );
                let fc2 = self.bind(
                    format!("conv2d(relu({}), out={c}, k=1)", fc1.name),
                    vec![n, c, 1, 1],
                );
                self.bind_pure(
                    format!("{} * sigmoid({})", x.name, fc2.name),
                    x.shape.clone(),
                );
            }
            1 if h >= 2 && w >= 2 && p.chance(25) => {
                // DenseNet's transition: a 1x1 convolution, then a 2x2 average pool.
                let out = c.div_ceil(2);
                let conv = self.bind(
                    format!("conv2d(relu({}), out={out}, k=1)", x.name),
                    vec![n, out, h, w],
                );
                self.bind_pure(
                    format!("avg_pool2d({}, k=2)", conv.name),
                    vec![n, out, h / 2, w / 2],
                );
            }
            1 => {
                let (expr, shape) = match p.below(4) {
                    0 if h >= 2 && w >= 2 => (
                        format!("max_pool2d({}, k=2)", x.name),
                        vec![n, c, h / 2, w / 2],
                    ),
                    1 => (
                        format!("avg_pool2d({}, k=3, s=1, pad=1)", x.name),
                        x.shape.clone(),
                    ),
                    2 => (
                        format!("max_pool2d({}, k=3, s=2, pad=1)", x.name),
                        vec![n, c, (h - 1) / 2 + 1, (w - 1) / 2 + 1],
                    ),
                    _ => (
                        format!("adaptive_avg_pool2d({}, size=1)", x.name),
                        vec![n, c, 1, 1],
                    ),
                };
                self.bind_pure(expr, shape);
            }
            2 => {
                let pooled = self.bind_pure(format!("mean({}, axes=[2, 3])", x.name), vec![n, c]);
                let head = self.linear(p, &pooled, Some(5));
                if p.chance(50) {
                    self.bind_pure(
                        format!("softmax({}, axis=-1)", head.name),
                        head.shape.clone(),
                    );
                }
            }
            3 => {
                let groups = p.of(&[1, c, 2]);
                let groups = if c.is_multiple_of(groups) { groups } else { 1 };
                self.bind(
                    format!(
                        "group_norm({}, groups={groups}, eps={})",
                        x.name,
                        p.of(NORM_EPS)
                    ),
                    x.shape.clone(),
                );
            }
            4 => {
                let out = p.of(&[1, 2]);
                let conv = self.conv(p, &x, Some(4 * out), true);
                self.bind_pure(
                    format!("pixel_shuffle({}, r=2)", conv.name),
                    vec![n, out, 2 * h, 2 * w],
                );
            }
            _ => {
                let t = self.pick_tokens(p);
                let norm = self.bind(
                    format!("layer_norm({}, eps={})", t.name, p.of(NORM_EPS)),
                    t.shape.clone(),
                );
                let reduce = p.of(&["sum", "mean", "max"]);
                let mut shape = t.shape.clone();
                shape[1] = 1;
                let r = self.bind_pure(
                    format!("{reduce}({}, axes=[1], keepdim=true)", norm.name),
                    shape,
                );
                // A broadcast: the chain that reads `r` must not swallow it.
                self.bind_pure(format!("{} - {}", norm.name, r.name), t.shape.clone());
            }
        }
    }

    /// The model's source text. Values chosen along the way are outputs, and so is every
    /// value nothing reads, except now and then (dead code for `dce`).
    fn program(mut self, p: &mut Picks) -> String {
        let read = self.names_read();
        for v in &self.vals[INPUTS.len()..] {
            if !read.contains(&v.name) && !self.outputs.contains(&v.name) && !p.chance(10) {
                self.outputs.push(v.name.clone());
            }
        }
        let mut text = String::from("bb 0.1;\nmodel random_graph() {\n");
        for line in &self.lines {
            text += &format!("    {line}\n");
        }
        for (i, name) in self.outputs.iter().enumerate() {
            text += &format!("    output o{i} = {name};\n");
        }
        if self.outputs.is_empty() || p.chance(10) {
            // A model whose only output is an input, or a pass-through next to the others.
            text += &format!("    output o{} = {};\n", self.outputs.len(), INPUTS[0]);
        }
        text + "}\n"
    }

    /// The identifiers on the right-hand side of any statement.
    fn names_read(&self) -> std::collections::HashSet<String> {
        self.lines
            .iter()
            .filter_map(|line| line.split_once(" = ").map(|(_, rhs)| rhs))
            .flat_map(|rhs| rhs.split(|c: char| !c.is_ascii_alphanumeric() && c != '_'))
            .map(str::to_string)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------

const MOTIFS: usize = 12;

/// The model's inputs: an NCHW image and a `[B, N, D]` token sequence.
const INPUTS: [&str; 2] = ["x", "t"];

#[derive(Clone, Debug)]
struct Case {
    /// `[B, C, H, W]` of the image input `x`.
    image: Shape,
    /// `[B, N, D]` of the token input `t`.
    tokens: Shape,
    motifs: Vec<(usize, Vec<u32>)>,
    /// Draws for the choice of outputs.
    outputs: Vec<u32>,
    seed: u64,
}

impl Case {
    fn source(&self) -> String {
        let mut g = Gen::new(&[
            (INPUTS[0], self.image.clone()),
            (INPUTS[1], self.tokens.clone()),
        ]);
        for (which, raw) in &self.motifs {
            g.motif(*which, &mut Picks { raw, at: 0 });
        }
        g.program(&mut Picks {
            raw: &self.outputs,
            at: 0,
        })
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..3,
        1usize..7,
        2usize..9,
        2usize..9,
        2usize..7,
        prop::sample::select(vec![2usize, 4, 6, 8]),
        prop::collection::vec(
            (
                0..MOTIFS,
                prop::collection::vec(any::<u32>(), PICKS_PER_MOTIF),
            ),
            1..13,
        ),
        prop::collection::vec(any::<u32>(), PICKS_PER_MOTIF),
        any::<u64>(),
    )
        .prop_map(|(b, c, h, w, n, d, motifs, outputs, seed)| Case {
            image: vec![b, c, h, w],
            tokens: vec![b, n, d],
            motifs,
            outputs,
            seed,
        })
}

// ---------------------------------------------------------------------------------------
// Running and comparing
// ---------------------------------------------------------------------------------------

/// Seeded default weights, with constant-initialised tensors perturbed (module doc).
fn case_weights(graph: &ir::Graph, seed: u64) -> BTreeMap<String, Tensor> {
    let mut w = weights::init_weights(graph, seed);
    let mut rng = Rng::new(seed ^ 0x5eed);
    for entry in weights::param_table(graph) {
        if matches!(entry.init, Init::Zeros | Init::Ones | Init::Fill(_)) {
            let t = w
                .get_mut(&entry.key)
                .expect("init_weights covers the table");
            let mut jitter = Tensor::zeros(t.shape());
            rng.fill_uniform(&mut jitter, 0.5);
            *t += &jitter;
        }
    }
    w
}

/// `got` matches `want` within [`TOLERANCE`] of the largest magnitude (floor 1); a
/// non-finite value must be reproduced exactly.
fn compare(want: &Tensor, got: &Tensor) -> Result<(), String> {
    compare_within(want, got, TOLERANCE)
}

/// [`compare`] with tolerance `tol` relative to the output's scale.
fn compare_within(want: &Tensor, got: &Tensor, tol: f32) -> Result<(), String> {
    if want.shape() != got.shape() {
        return Err(format!("shape {:?} became {:?}", want.shape(), got.shape()));
    }
    let scale = want
        .iter()
        .filter(|v| v.is_finite())
        .fold(1f32, |m, v| m.max(v.abs()));
    for (i, (&a, &b)) in want.iter().zip(got.iter()).enumerate() {
        let ok = if a.is_finite() {
            (a - b).abs() <= tol * scale
        } else {
            (a.is_nan() && b.is_nan()) || a == b
        };
        if !ok {
            return Err(format!("element {i}: {a} became {b} (scale {scale})"));
        }
    }
    Ok(())
}

/// The graph of a generated program; an error means the generator is wrong.
fn elaborate(text: &str) -> Result<ir::Graph, String> {
    let program = Program::from_source("random.bb", text)
        .map_err(|e| format!("generated program does not parse:\n{}", e.render()))?;
    let model = program.elaborate(&Options::default()).map_err(|d| {
        format!(
            "generated program does not elaborate:\n{}",
            bbc::render(&d, Some(&program.sources))
        )
    })?;
    Ok(model.graph)
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    check_program(&case.source(), case.seed)
}

/// The graph of `text` with its weights and inputs from `seed`.
type CaseData = (ir::Graph, BTreeMap<String, Tensor>, HashMap<String, Tensor>);

fn case_data(text: &str, seed: u64) -> Result<CaseData, String> {
    let graph = elaborate(text)?;
    let w = case_weights(&graph, seed);
    let mut rng = Rng::new(seed.wrapping_add(1));
    let inputs: HashMap<String, Tensor> = graph
        .inputs
        .iter()
        .map(|&i| {
            let n = graph.node(i);
            (n.name.clone(), rng.standard_normal_tensor(&n.shape))
        })
        .collect();
    Ok((graph, w, inputs))
}

/// Runs `text` unoptimised and at -O1 and -O2 with weights and inputs from `seed`.
fn check_program(text: &str, seed: u64) -> Result<(), TestCaseError> {
    let fail = |what: String| TestCaseError::fail(format!("{what}\n--- program ---\n{text}"));
    let (graph, w, inputs) = case_data(text, seed).map_err(fail)?;
    let reference = interp::run(&graph, &inputs, &w).map_err(|e| fail(e.to_string()))?;
    let before = stats::stats(&graph);
    for level in [1, 2] {
        let mut opt = graph.clone();
        passes::run(
            &mut opt,
            &passes::pipeline(level),
            &passes::Options::default(),
        )
        .map_err(|e| fail(format!("-O{level}: {e}")))?;
        let after = stats::stats(&opt);
        if after.kernels > before.kernels {
            return Err(fail(format!(
                "-O{level} launches {} kernels, -O0 {}",
                after.kernels, before.kernels
            )));
        }
        if after.intermediate_bytes > before.intermediate_bytes {
            return Err(fail(format!(
                "-O{level} writes {} intermediate bytes, -O0 {}",
                after.intermediate_bytes, before.intermediate_bytes
            )));
        }
        let printed = ir::print_text(&opt);
        if printed.contains(" = dropout(") || printed.contains(" = drop_path(") {
            return Err(fail(format!("-O{level} left a no-op:\n{printed}")));
        }
        let parsed = ir::parse_text(&printed)
            .map_err(|e| fail(format!("-O{level} IR does not parse back: {e}\n{printed}")))?;
        let problems = ir::verify(&parsed);
        if !problems.is_empty() {
            return Err(fail(format!(
                "-O{level} parsed IR: {problems:?}\n{printed}"
            )));
        }
        if ir::print_text(&parsed) != printed {
            return Err(fail(format!(
                "-O{level} IR text does not round-trip:\n{printed}"
            )));
        }
        let out = interp::run(&opt, &inputs, &w)
            .map_err(|e| fail(format!("-O{level}: {e}\n{printed}")))?;
        for (name, want) in &reference {
            let got = out
                .get(name)
                .ok_or_else(|| fail(format!("-O{level} lost output `{name}`")))?;
            compare(want, got).map_err(|e| {
                fail(format!(
                    "-O{level} output `{name}`: {e}\n--- -O{level} IR ---\n{printed}"
                ))
            })?;
        }
        if level == 2 {
            check_cpu_executable(&opt, &inputs, &w, &reference)
                .map_err(|e| fail(format!("cpu executable: {e}\n--- -O2 IR ---\n{printed}")))?;
        }
    }
    Ok(())
}

/// The CPU executable of the -O2 graph (bounds-checked code, two threads) against the
/// unoptimised interpreter, at the JIT's tolerance (its exp/tanh/erf approximations; see
/// `tests/cpu_backend.rs`).
fn check_cpu_executable(
    graph: &ir::Graph,
    inputs: &HashMap<String, Tensor>,
    w: &BTreeMap<String, Tensor>,
    reference: &BTreeMap<String, Tensor>,
) -> Result<(), String> {
    let opts = ExecOptions {
        threads: 2,
        codegen: CodegenOptions {
            bounds_checked: true,
            ..CodegenOptions::default()
        },
    };
    let mut exe = compile(graph, w, &opts).map_err(|e| e.to_string())?;
    let out = exe.run(inputs).map_err(|e| e.to_string())?;
    for (name, want) in reference {
        let got = out.get(name).ok_or(format!("no output `{name}`"))?;
        compare_within(want, got, JIT_TOLERANCE).map_err(|e| format!("output `{name}`: {e}"))?;
    }
    Ok(())
}

/// Proptest's configuration: 64 cases unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        // A failure is reported with its program text; no regression file is written.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// [`check`], with a panic (in a pass, the verifier or the interpreter) turned into a
/// failure that shows the program.
fn check_guarded(case: &Case) -> Result<(), TestCaseError> {
    catch_unwind(AssertUnwindSafe(|| check(case))).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(TestCaseError::fail(format!(
            "panicked: {msg}\n--- program ---\n{}",
            case.source()
        )))
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn optimised_random_graphs_compute_what_the_unoptimised_ones_do(c in case()) {
        check_guarded(&c)?;
    }
}

/// Random graphs through the WGSL launch plan and the wgpu executor (lavapipe in CI): fewer
/// cases than on the CPU, since lavapipe compiles every pipeline on its first dispatch.
/// Without a Vulkan adapter the test says so and passes, unless `BBC_REQUIRE_GPU` is set.
#[test]
fn random_graphs_run_on_the_gpu() {
    use bbc::compiler::codegen::gpu::{plan::build, Dialect, GpuOptions};
    use bbc::runtime::gpu::wgpu::WgpuExecutor;
    use bbc::runtime::gpu::Executor;
    let cases: usize = std::env::var("BBC_GPU_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = case();
    for _ in 0..cases {
        let c = strategy
            .new_tree(&mut runner)
            .expect("strategy builds")
            .current();
        let text = c.source();
        let (graph, w, inputs) = case_data(&text, c.seed).unwrap_or_else(|e| panic!("{e}"));
        let reference = interp::run(&graph, &inputs, &w).expect("interpreter");
        let mut opt = graph.clone();
        passes::run(&mut opt, &passes::pipeline(2), &passes::Options::default()).expect("-O2");
        let (plan, constants) = build(&opt, &w, Dialect::Wgsl, &GpuOptions::default())
            .unwrap_or_else(|e| panic!("{e}\n--- program ---\n{text}"));
        let mut exe = match WgpuExecutor::new(plan, &constants) {
            Ok(exe) => exe,
            Err(e) if std::env::var_os("BBC_REQUIRE_GPU").is_none() => {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "SKIPPED: no GPU adapter ({e})");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let out = exe.run(&inputs).expect("runs");
        for (name, want) in &reference {
            compare_within(want, &out[name], JIT_TOLERANCE)
                .unwrap_or_else(|e| panic!("gpu output `{name}`: {e}\n--- program ---\n{text}"));
        }
    }
}

/// The generator reaches the patterns it is for: over a fixed set of cases, every -O2 pass
/// that rewrites fires somewhere.
#[test]
fn generated_graphs_exercise_every_pass() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = case();
    let mut fired: BTreeMap<&'static str, usize> = BTreeMap::new();
    for _ in 0..200 {
        let c = strategy
            .new_tree(&mut runner)
            .expect("strategy builds")
            .current();
        let text = c.source();
        let mut graph = elaborate(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let runs = passes::run(
            &mut graph,
            &passes::pipeline(2),
            &passes::Options::default(),
        )
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
        for run in runs {
            *fired.entry(run.name).or_default() += usize::from(run.changed);
        }
    }
    println!("cases (of 200) in which each -O2 pass changed the graph: {fired:?}");
    let never: Vec<_> = fired.iter().filter(|(_, &n)| n == 0).collect();
    assert!(
        never.is_empty(),
        "passes that never fired: {never:?} (all: {fired:?})"
    );
}

/// Minimal programs of bugs this test found, kept so they stay fixed: `fold-batch-norm`
/// folding into a conv that is itself a graph output, and `fuse-fff` reading a node it had
/// removed when a scaled concat conv is summed with an upsample.
#[test]
fn found_bugs_stay_fixed() {
    let cases = [
        "bb 0.1;\nmodel m() {\n    input x: f32[1, 1, 2, 2];\n    a = conv2d(x, out=1, k=1);\n    \
         b = batch_norm2d(a, eps=0.5);\n    output p = b;\n    output q = a;\n}\n",
        "bb 0.1;\nmodel m() {\n    input x: f32[1, 1, 2, 2];\n    \
         a = conv2d(concat([x, x], axis=1), out=4, k=1);\n    b = conv2d(x, out=4, k=1);\n    \
         param w: f32[1] = ones();\n    output y = a * w + upsample(b, size=(2, 2));\n}\n",
        // A 1x1 convolution scaled on both sides defined its folded weight twice.
        "bb 0.1;\nmodel m() {\n    input x: f32[1, 1, 2, 3];\n    \
         v1 = sigmoid(full([1, 1, 1], value=0.3)) * 2.0 + 0.5;\n    \
         v3 = conv2d(x * v1, out=4, k=1, s=1, pad=0, groups=1, bias=false);\n    \
         param p4: f32[4, 1, 1] = fill(0.1);\n    v5 = v3 * p4;\n    output o0 = v5;\n    \
         output o1 = silu(v5);\n}\n",
        // Two batch norms folded into one convolution defined their values twice; so did
        // one whose folded names a scope of the spec had already taken.
        "bb 0.1;\nmodel m() {\n    input x: f32[1, 2, 5, 5];\n    c = conv2d(x, out=4, k=3, pad=1);\n    \
         b1 = batch_norm2d(c);\n    output y = batch_norm2d(b1);\n}\n",
        "bb 0.1;\nmodel m() {\n    input x: f32[1, 4, 5, 5];\n    c = conv2d(x, out=4, k=3, pad=1);\n    \
         b = batch_norm2d(c);\n    scope \"c\" {\n        bn_scale = relu(x);\n    }\n    output y = b + bn_scale;\n}\n",
    ];
    for (seed, text) in cases.iter().enumerate() {
        if let Err(e) = check_program(text, seed as u64) {
            panic!("{e}");
        }
    }
}
