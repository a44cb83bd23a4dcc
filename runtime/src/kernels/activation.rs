//! Bias plus activation over finished output rows, in place: `x = act(x + bias)` with the
//! bias per row (a convolution's channel), per column (a linear layer's output feature) or
//! none. This is the native form of the most common contraction epilogues: the code
//! generator's epilogues run 4 lanes at a time (Cranelift has no 256-bit vectors on x86-64),
//! these run 8 with AVX2 + FMA, chosen at run time (`is_x86_feature_detected!`), with a
//! portable scalar path elsewhere.
//!
//! The approximations, shared with the code generator (`codegen/cpu/math.rs` in the compiler
//! reads the constants from here):
//!
//! - Sigmoid and SiLU go through `e = exp(−|x|)`: sigmoid is `1 / (1 + e)` for `x ≥ 0` and
//!   `e / (1 + e)` below, SiLU `x` times that fraction, one division each. `exp` on
//!   `z ≤ 0`: `n = round(z·log2 e)` by a magic-number add that also leaves `2^n`'s exponent
//!   bits in place, the reduction `z − n·ln 2`, then a degree-5 minimax polynomial (XNNPACK's
//!   sigmoid coefficients); below the cutoff (−87.34, where `exp` turns subnormal) `e` is 0.
//!   Nothing overflows, so no clamp. With FMA the reduction is one fused step with ln 2 in
//!   f32 (Cody-Waite's two parts without). Against `1 / (1 + exp(−x))` with Cephes' `expf`
//!   and a Newton-refined reciprocal, this is 8 fewer vector instructions: SiLU 0.41 -> 0.35
//!   ns per element (one thread, in cache) and EfficientNet-B0 4-5% faster, with a smaller
//!   error.
//! - `erf` is Eigen's rational approximation (odd degree 13 over even degree 8 on [−4, 4]).
//!   GELU, `0.5·x·(1 + erf(x·√½))` in the op table, is here `x·(0.5 + c·P(c²)/Q(c²))` with
//!   `c` the clamped `x` and erf's coefficients rescaled at compile time ([`GELU_NUMERATOR`]):
//!   the same rational function, three instructions fewer. The code generator's loops
//!   compute the op table's form from `erf`.
//!
//! Where a kernel finishes a whole register tile before storing it, the tile is activated at
//! once (`avx2::activate_all`): each step of the approximation is issued for every register
//! before the next, so a dozen long dependency chains overlap instead of running a row at a
//! time (EfficientNet's 16->96 1x1 at 112x112 with SiLU, 2 threads: 0.476 -> 0.385 ms). On
//! AVX-512 CPUs the row pass is compiled with AVX-512VL (`avx2::rows_wide`): still 8 lanes,
//! but 32 registers keep the constants in place of reloads and spills (SiLU 0.35 -> 0.26 ns
//! per element, one thread, in cache). All builds compute the same bits.
//!
//! Clamps and selects keep NaN, so NaN propagates. Errors against f64 over dense sweeps of
//! 400 001 points (`approximation_errors` below recomputes and bounds them), the same on
//! the AVX2 + FMA and the portable path unless two figures (AVX2 first) are given:
//! `exp(z)` 3.8e-7 / 1.8e-7 maximum relative error on [−87.34, 0] (the one-constant
//! reduction's error grows with `n`; it is largest near the cutoff); sigmoid 8.9e-8 maximum
//! absolute error on [−30, 30] and, for `x ≤ 0`, the relative error of `exp`; on [−10, 10],
//! SiLU 1.25e-7 and GELU 1.0e-6 / 1.2e-6 of `max(|result|, 1)` (GELU's is erf's near
//! x = −5.5, times |x|/2); erf 4.4e-7 / 4.5e-7 absolute on [−6, 6].

#[cfg(target_arch = "x86_64")]
use crate::kernels::isa::wide_available;
use serde::{Deserialize, Serialize};

/// An activation the native epilogue computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Activation {
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `1 / (1 + exp(−x))`.
    Sigmoid,
    /// `x · sigmoid(x)`.
    Silu,
    /// `0.5·x·(1 + erf(x/√2))` (the exact form, not the tanh approximation).
    Gelu,
}

impl Activation {
    pub const ALL: [Activation; 6] = [
        Activation::Identity,
        Activation::Relu,
        Activation::Relu6,
        Activation::Sigmoid,
        Activation::Silu,
        Activation::Gelu,
    ];
}

/// The bias added to one row before the activation.
#[derive(Clone, Copy, Debug)]
pub enum RowBias<'a> {
    None,
    /// One value for the whole row.
    Scalar(f32),
    /// One value per element of the row (at least as many as the row has).
    PerColumn(&'a [f32]),
}

/// The logistic's `exp(z)` for `z = −|x| ≤ 0` (sigmoid and SiLU): adding `LOGISTIC_MAGIC`
/// (1.5·2^23 + 127) to `z·log2 e` rounds it to the nearest integer `n` and leaves `n + 127`,
/// the biased exponent of `2^n`, in the low mantissa bits.
pub const LOGISTIC_MAGIC: f32 = 12_583_039.0;
/// ln 2 rounded to f32, for the reduction `z − n·ln 2` in one fused multiply-add.
pub const LOGISTIC_LN2: f32 = std::f32::consts::LN_2;
/// ln 2 in two parts for the reduction without FMA: `LOGISTIC_LN2_HI` has few enough bits
/// that `n·LOGISTIC_LN2_HI` is exact.
pub const LOGISTIC_LN2_HI: f32 = 0.693_145_75;
pub const LOGISTIC_LN2_LO: f32 = 1.428_606_8e-6;
/// `exp(t) ≈ 1 + t·P(t)` on `[−ln 2 / 2, ln 2 / 2]`, a degree-5 minimax polynomial (the one
/// XNNPACK's sigmoid kernels use), `P`'s coefficients lowest degree first.
pub const LOGISTIC_POLYNOMIAL: [f32; 5] = [
    0.999_999_7,
    0.499_991_5,
    0.166_676_52,
    0.041_897_822,
    0.008_289_291,
];
/// Below this `z`, `exp(z)` is subnormal in f32 and taken as 0.
pub const LOGISTIC_CUTOFF: f32 = -87.336_54;

/// `erf(x) = x·P(x²) / Q(x²)` on `[−ERF_CLAMP, ERF_CLAMP]` (lowest degree first).
pub const ERF_CLAMP: f32 = 4.0;
// Kept as published, beyond f32 precision.
#[allow(clippy::excessive_precision)]
pub const ERF_NUMERATOR: [f32; 7] = [
    -1.609_603_3e-2,
    -2.954_599_8e-3,
    -7.349_906_3e-4,
    -5.692_506_4e-5,
    -2.101_024e-6,
    2.770_681_4e-8,
    -2.726_142_3e-10,
];
pub const ERF_DENOMINATOR: [f32; 5] = [
    -1.426_474e-2,
    -7.373_329e-3,
    -1.682_827e-3,
    -2.133_740_6e-4,
    -1.456_607_2e-5,
];

/// GELU's half of erf: `0.5·erf(x·√½) = x·P(t) / Q(t)` with `t = x²` on
/// `[−ERF_CLAMP·√2, ERF_CLAMP·√2]`: erf's rational approximation with its coefficients
/// rescaled for `t` (the `i`-th by `2^−i`, the numerator's also by `0.5·√½`), so that GELU
/// is `x · (0.5 + x·P(t)/Q(t))` without scaling `x` first or adding one after.
pub const GELU_NUMERATOR: [f32; 7] =
    rescaled(&ERF_NUMERATOR, 0.5 * std::f64::consts::FRAC_1_SQRT_2);
pub const GELU_DENOMINATOR: [f32; 5] = rescaled(&ERF_DENOMINATOR, 1.0);
/// Where GELU's `x` is clamped: erf's clamp, for `x·√½`.
pub const GELU_CLAMP: f32 = (ERF_CLAMP as f64 * std::f64::consts::SQRT_2) as f32;

/// `coefs[i] · scale · 2^−i`, rounded once from f64.
const fn rescaled<const N: usize>(coefs: &[f32; N], scale: f64) -> [f32; N] {
    let mut out = [0.0; N];
    let (mut i, mut power) = (0, 1.0f64);
    while i < N {
        out[i] = (coefs[i] as f64 * scale * power) as f32;
        power *= 0.5;
        i += 1;
    }
    out
}

/// Rewrites every row in place: `x = act(x + bias)`.
///
/// # Panics
/// If a [`RowBias::PerColumn`] slice is shorter than its row.
pub fn activate_rows<'a>(
    act: Activation,
    rows: impl Iterator<Item = (&'a mut [f32], RowBias<'a>)>,
) {
    activate_rows_on(
        act,
        rows.map(|(row, bias)| (row, bias, None)),
        simd_available(),
    );
}

/// Rewrites every row in place: `x = act((x + bias) + residual)`, `residual` a row of
/// another tensor laid out like the output (a residual connection's shortcut).
///
/// # Panics
/// If a [`RowBias::PerColumn`] slice or a residual row is shorter than its row.
pub fn activate_rows_with_residual<'a>(
    act: Activation,
    rows: impl Iterator<Item = (&'a mut [f32], RowBias<'a>, &'a [f32])>,
) {
    let rows = rows.map(|(row, bias, residual)| (row, bias, Some(residual)));
    activate_rows_on(act, rows, simd_available());
}

/// Whether the 8-lane path runs on this CPU.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // `is_x86_feature_detected!` caches its answer; this is two loads.
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A row, its bias and its residual row, if any.
type Row<'a> = (&'a mut [f32], RowBias<'a>, Option<&'a [f32]>);

/// [`activate_rows`] on the 8-lane path when `simd` (which must then be available), else on
/// the portable one.
fn activate_rows_on<'a>(act: Activation, rows: impl Iterator<Item = Row<'a>>, simd: bool) {
    struct Rows<I> {
        rows: I,
        simd: bool,
    }
    impl<'a, I: Iterator<Item = Row<'a>>> WithAct for Rows<I> {
        type Output = ();
        fn call<A: Act>(self) {
            #[cfg(target_arch = "x86_64")]
            if self.simd && simd_available() {
                // SAFETY: AVX2 and FMA were detected, and AVX-512F/VL for the wide build.
                unsafe {
                    if wide_available() {
                        avx2::rows_wide::<A>(self.rows)
                    } else {
                        avx2::rows::<A>(self.rows)
                    }
                };
                return;
            }
            for (row, bias, residual) in self.rows {
                run_row::<f32, A>(row, bias, residual);
            }
        }
    }
    with_act(act, Rows { rows, simd });
}

/// Code generic over the [`Act`] type, called by [`with_act`] with the type of an
/// [`Activation`] value: the one match from values to types that every kernel monomorphising
/// over activations goes through.
pub(crate) trait WithAct {
    type Output;
    fn call<A: Act>(self) -> Self::Output;
}

/// `f.call::<A>()` with `A` the type of `act`.
pub(crate) fn with_act<F: WithAct>(act: Activation, f: F) -> F::Output {
    match act {
        Activation::Identity => f.call::<Identity>(),
        Activation::Relu => f.call::<Relu>(),
        Activation::Relu6 => f.call::<Relu6>(),
        Activation::Sigmoid => f.call::<Sigmoid>(),
        Activation::Silu => f.call::<Silu>(),
        Activation::Gelu => f.call::<Gelu>(),
    }
}

/// What is added to a row's elements before the activation: a bias, `scalar` or
/// `per_column`'s element at the same offset (or nothing unless `has_bias`), then the
/// `residual` row's element at the same offset, if any.
#[derive(Clone, Copy)]
struct Terms<'a, V> {
    per_column: Option<&'a [f32]>,
    scalar: V,
    has_bias: bool,
    residual: Option<&'a [f32]>,
}

/// One row: the bias and the residual, then the activation, `V::WIDTH` elements at a
/// time; the tail goes through the same vector code on a padded copy, so every element gets
/// the same rounding.
#[inline(always)]
fn run_row<V: Lanes, A: Act>(row: &mut [f32], bias: RowBias<'_>, residual: Option<&[f32]>) {
    let w = V::WIDTH;
    let full = row.len() - row.len() % w;
    let per_column = match bias {
        RowBias::PerColumn(b) => {
            assert!(b.len() >= row.len(), "a column bias shorter than its row");
            Some(&b[..row.len()])
        }
        _ => None,
    };
    let residual = residual.map(|r| {
        assert!(r.len() >= row.len(), "a residual row shorter than its row");
        &r[..row.len()]
    });
    let terms = Terms {
        per_column,
        scalar: V::splat(match bias {
            RowBias::Scalar(b) => b,
            _ => 0.0,
        }),
        has_bias: !matches!(bias, RowBias::None),
        residual,
    };
    let (body, tail) = row.split_at_mut(full);
    run_body::<V, A>(body, terms);
    if !tail.is_empty() {
        let mut x = [0.0f32; MAX_WIDTH];
        let (mut b, mut r) = ([0.0f32; MAX_WIDTH], [0.0f32; MAX_WIDTH]);
        x[..tail.len()].copy_from_slice(tail);
        if let Some(bs) = per_column {
            b[..tail.len()].copy_from_slice(&bs[full..]);
        }
        if let Some(rs) = residual {
            r[..tail.len()].copy_from_slice(&rs[full..]);
        }
        let padded = Terms {
            per_column: per_column.map(|_| &b[..]),
            residual: residual.map(|_| &r[..]),
            ..terms
        };
        apply::<V, A>(V::load(&x[..w]), padded, 0).store(&mut x[..w]);
        tail.copy_from_slice(&x[..tail.len()]);
    }
}

/// `x = act(x + bias + residual)` for each whole vector of `body` (see [`Terms`]), four
/// vectors per step: the approximations are long dependency chains, and four independent
/// ones side by side keep the FP units busy where one chain at a time leaves them waiting
/// on its latency (ns per element on Zen 4, in cache: SiLU 0.52 -> 0.48, sigmoid 0.52 ->
/// 0.43, GELU 0.44 -> 0.39). Plain functions, not closures, so that everything inlines into
/// the caller's SIMD target features.
#[inline(always)]
fn run_body<V: Lanes, A: Act>(body: &mut [f32], terms: Terms<'_, V>) {
    let w = V::WIDTH;
    let quad = body.len() - body.len() % (4 * w);
    let (quads, singles) = body.split_at_mut(quad);
    for (q, x) in quads.chunks_exact_mut(4 * w).enumerate() {
        let i = q * 4 * w;
        let y0 = apply::<V, A>(V::load(x), terms, i);
        let y1 = apply::<V, A>(V::load(&x[w..]), terms, i + w);
        let y2 = apply::<V, A>(V::load(&x[2 * w..]), terms, i + 2 * w);
        let y3 = apply::<V, A>(V::load(&x[3 * w..]), terms, i + 3 * w);
        y0.store(x);
        y1.store(&mut x[w..]);
        y2.store(&mut x[2 * w..]);
        y3.store(&mut x[3 * w..]);
    }
    for (k, x) in singles.chunks_exact_mut(w).enumerate() {
        apply::<V, A>(V::load(x), terms, quad + k * w).store(x);
    }
}

/// `act((x + bias) + residual)` for the vector at offset `i` of a row (see [`Terms`]).
#[inline(always)]
fn apply<V: Lanes, A: Act>(x: V, terms: Terms<'_, V>, i: usize) -> V {
    let b = match terms.per_column {
        Some(bs) => V::load(&bs[i..]),
        None => terms.scalar,
    };
    let x = if terms.has_bias { x.add(b) } else { x };
    let x = match terms.residual {
        Some(r) => x.add(V::load(&r[i..])),
        None => x,
    };
    A::apply(x)
}

/// The widest [`Lanes::WIDTH`].
pub(crate) const MAX_WIDTH: usize = 8;

/// The arithmetic the approximations are written in, once for scalars and once for 8-lane
/// vectors, so both paths compute the same algorithm.
pub(crate) trait Lanes: Copy {
    const WIDTH: usize;
    /// The first `WIDTH` elements of `s`.
    fn load(s: &[f32]) -> Self;
    /// Into the first `WIDTH` elements of `s`.
    fn store(self, s: &mut [f32]);
    fn splat(v: f32) -> Self;
    fn add(self, b: Self) -> Self;
    fn mul(self, b: Self) -> Self;
    fn div(self, b: Self) -> Self;
    /// `self·b + c`, fused where the path has FMA.
    fn mul_add(self, b: Self, c: Self) -> Self;
    /// `lo` where `self < lo`, else `self` (NaN kept).
    fn at_least(self, lo: Self) -> Self;
    /// `hi` where `self > hi`, else `self` (NaN kept).
    fn at_most(self, hi: Self) -> Self;
    /// `2^n` for `self = n + LOGISTIC_MAGIC` (`n + 127` in the low mantissa bits, `n` in
    /// −126..=127).
    fn pow2_of_biased(self) -> Self;
    /// `z − self·ln 2` for an integer `self` of at most 126 in size: one fused step with
    /// [`LOGISTIC_LN2`] (its rounding error times 126 is 2.4e-7), or exact products of the
    /// two-part ln 2 without FMA.
    fn minus_ln2_times(self, z: Self) -> Self;
    /// `−|self|` (the sign bit set).
    fn minus_abs(self) -> Self;
    /// `0` where `z < lo`, else `self`.
    fn zero_where_below(self, z: Self, lo: Self) -> Self;
    /// `negative` where `x`'s sign bit is set, else `self`.
    fn sign_select(self, x: Self, negative: Self) -> Self;
}

impl Lanes for f32 {
    const WIDTH: usize = 1;
    #[inline(always)]
    fn load(s: &[f32]) -> f32 {
        s[0]
    }
    #[inline(always)]
    fn store(self, s: &mut [f32]) {
        s[0] = self;
    }
    #[inline(always)]
    fn splat(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn add(self, b: f32) -> f32 {
        self + b
    }
    #[inline(always)]
    fn mul(self, b: f32) -> f32 {
        self * b
    }
    #[inline(always)]
    fn div(self, b: f32) -> f32 {
        self / b
    }
    #[inline(always)]
    fn mul_add(self, b: f32, c: f32) -> f32 {
        // `f32::mul_add` is a library call without FMA hardware; the generated code also
        // multiplies and adds where the host has no FMA.
        self * b + c
    }
    #[inline(always)]
    fn at_least(self, lo: f32) -> f32 {
        if self < lo {
            lo
        } else {
            self
        }
    }
    #[inline(always)]
    fn at_most(self, hi: f32) -> f32 {
        if self > hi {
            hi
        } else {
            self
        }
    }
    #[inline(always)]
    fn pow2_of_biased(self) -> f32 {
        f32::from_bits(self.to_bits() << 23)
    }
    #[inline(always)]
    fn minus_ln2_times(self, z: f32) -> f32 {
        (z - self * LOGISTIC_LN2_HI) - self * LOGISTIC_LN2_LO
    }
    #[inline(always)]
    fn minus_abs(self) -> f32 {
        -self.abs()
    }
    #[inline(always)]
    fn zero_where_below(self, z: f32, lo: f32) -> f32 {
        if z < lo {
            0.0
        } else {
            self
        }
    }
    #[inline(always)]
    fn sign_select(self, x: f32, negative: f32) -> f32 {
        if x.is_sign_negative() {
            negative
        } else {
            self
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{Act, Lanes};
    use std::arch::x86_64::*;

    /// Eight lanes. Values of this type exist only inside [`rows`], which runs after AVX2
    /// and FMA were detected, so its methods' intrinsics always have their features.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx(__m256);

    /// [`super::run_row`] over every row, 8 lanes at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows<'a, A: Act>(rows: impl Iterator<Item = super::Row<'a>>) {
        for (row, bias, residual) in rows {
            super::run_row::<Avx, A>(row, bias, residual);
        }
    }

    /// [`rows`] compiled for AVX-512 CPUs: still 8 lanes, but with 32 vector registers
    /// the approximations' constants stay in registers instead of being reloaded or
    /// spilled (SiLU 0.35 -> 0.26 ns per element on Zen 4, one thread, in cache).
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512VL, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    pub(super) unsafe fn rows_wide<'a, A: Act>(rows: impl Iterator<Item = super::Row<'a>>) {
        for (row, bias, residual) in rows {
            super::run_row::<Avx, A>(row, bias, residual);
        }
    }

    /// `act(x + bias)` on eight lanes: for kernels that finish their accumulators in
    /// registers before the one store.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA (callers are `target_feature` functions).
    #[inline(always)]
    pub(crate) unsafe fn activate<A: Act>(x: __m256, bias: __m256) -> __m256 {
        A::apply(Avx(x).add(Avx(bias))).0
    }

    /// `act(x)` on every register of a finished tile at once: each step of the
    /// approximation is issued for all `N` registers before the next, so their long
    /// dependency chains overlap in straight-line code.
    ///
    /// # Safety
    /// As for [`activate`].
    #[inline(always)]
    pub(crate) unsafe fn activate_all<A: Act, const N: usize>(xs: [__m256; N]) -> [__m256; N] {
        // Plain loops throughout: `array::map` is not always inlined, and its closure's
        // intrinsics would then be calls, compiled without the caller's features.
        let mut many = Many([Avx(_mm256_setzero_ps()); N]);
        for (m, x) in many.0.iter_mut().zip(xs) {
            *m = Avx(x);
        }
        let many = A::apply(many);
        let mut out = xs;
        for (o, m) in out.iter_mut().zip(many.0) {
            *o = m.0;
        }
        out
    }

    /// `N` registers treated as one: every operation is applied to each in turn.
    #[derive(Clone, Copy)]
    struct Many<const N: usize>([Avx; N]);

    impl<const N: usize> Many<N> {
        #[inline(always)]
        fn each(self, f: impl Fn(Avx) -> Avx) -> Many<N> {
            let mut out = self.0;
            for o in out.iter_mut() {
                *o = f(*o);
            }
            Many(out)
        }
        #[inline(always)]
        fn zip3(self, b: Many<N>, c: Many<N>, f: impl Fn(Avx, Avx, Avx) -> Avx) -> Many<N> {
            let mut out = self.0;
            for ((o, b), c) in out.iter_mut().zip(b.0).zip(c.0) {
                *o = f(*o, b, c);
            }
            Many(out)
        }
        #[inline(always)]
        fn zip(self, b: Many<N>, f: impl Fn(Avx, Avx) -> Avx) -> Many<N> {
            let mut out = self.0;
            for (o, b) in out.iter_mut().zip(b.0) {
                *o = f(*o, b);
            }
            Many(out)
        }
    }

    impl<const N: usize> Lanes for Many<N> {
        const WIDTH: usize = 8 * N;
        #[inline(always)]
        fn load(s: &[f32]) -> Many<N> {
            let mut out = Many::splat(0.0);
            for (i, o) in out.0.iter_mut().enumerate() {
                *o = Avx::load(&s[8 * i..]);
            }
            out
        }
        #[inline(always)]
        fn store(self, s: &mut [f32]) {
            for (i, v) in self.0.into_iter().enumerate() {
                v.store(&mut s[8 * i..]);
            }
        }
        #[inline(always)]
        fn splat(v: f32) -> Many<N> {
            Many([Avx::splat(v); N])
        }
        #[inline(always)]
        fn add(self, b: Many<N>) -> Many<N> {
            self.zip(b, Avx::add)
        }
        #[inline(always)]
        fn mul(self, b: Many<N>) -> Many<N> {
            self.zip(b, Avx::mul)
        }
        #[inline(always)]
        fn div(self, b: Many<N>) -> Many<N> {
            self.zip(b, Avx::div)
        }
        #[inline(always)]
        fn mul_add(self, b: Many<N>, c: Many<N>) -> Many<N> {
            self.zip3(b, c, Avx::mul_add)
        }
        #[inline(always)]
        fn at_least(self, lo: Many<N>) -> Many<N> {
            self.zip(lo, Avx::at_least)
        }
        #[inline(always)]
        fn at_most(self, hi: Many<N>) -> Many<N> {
            self.zip(hi, Avx::at_most)
        }
        #[inline(always)]
        fn pow2_of_biased(self) -> Many<N> {
            self.each(Avx::pow2_of_biased)
        }
        #[inline(always)]
        fn minus_ln2_times(self, z: Many<N>) -> Many<N> {
            self.zip(z, Avx::minus_ln2_times)
        }
        #[inline(always)]
        fn minus_abs(self) -> Many<N> {
            self.each(Avx::minus_abs)
        }
        #[inline(always)]
        fn zero_where_below(self, z: Many<N>, lo: Many<N>) -> Many<N> {
            self.zip3(z, lo, Avx::zero_where_below)
        }
        #[inline(always)]
        fn sign_select(self, x: Many<N>, negative: Many<N>) -> Many<N> {
            self.zip3(x, negative, Avx::sign_select)
        }
    }

    // SAFETY (every `unsafe` block below): see `Avx`; loads and stores check their length.
    impl Lanes for Avx {
        const WIDTH: usize = 8;
        #[inline(always)]
        fn load(s: &[f32]) -> Avx {
            assert!(s.len() >= 8);
            Avx(unsafe { _mm256_loadu_ps(s.as_ptr()) })
        }
        #[inline(always)]
        fn store(self, s: &mut [f32]) {
            assert!(s.len() >= 8);
            unsafe { _mm256_storeu_ps(s.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn splat(v: f32) -> Avx {
            Avx(unsafe { _mm256_set1_ps(v) })
        }
        #[inline(always)]
        fn add(self, b: Avx) -> Avx {
            Avx(unsafe { _mm256_add_ps(self.0, b.0) })
        }
        #[inline(always)]
        fn mul(self, b: Avx) -> Avx {
            Avx(unsafe { _mm256_mul_ps(self.0, b.0) })
        }
        #[inline(always)]
        fn div(self, b: Avx) -> Avx {
            Avx(unsafe { _mm256_div_ps(self.0, b.0) })
        }
        #[inline(always)]
        fn mul_add(self, b: Avx, c: Avx) -> Avx {
            Avx(unsafe { _mm256_fmadd_ps(self.0, b.0, c.0) })
        }
        #[inline(always)]
        fn at_least(self, lo: Avx) -> Avx {
            // `maxps` returns its second operand when either is NaN.
            Avx(unsafe { _mm256_max_ps(lo.0, self.0) })
        }
        #[inline(always)]
        fn at_most(self, hi: Avx) -> Avx {
            Avx(unsafe { _mm256_min_ps(hi.0, self.0) })
        }
        #[inline(always)]
        fn pow2_of_biased(self) -> Avx {
            unsafe {
                let bits = _mm256_slli_epi32::<23>(_mm256_castps_si256(self.0));
                Avx(_mm256_castsi256_ps(bits))
            }
        }
        #[inline(always)]
        fn minus_ln2_times(self, z: Avx) -> Avx {
            Avx(unsafe { _mm256_fnmadd_ps(self.0, _mm256_set1_ps(super::LOGISTIC_LN2), z.0) })
        }
        #[inline(always)]
        fn minus_abs(self) -> Avx {
            Avx(unsafe { _mm256_or_ps(self.0, _mm256_set1_ps(-0.0)) })
        }
        #[inline(always)]
        fn zero_where_below(self, z: Avx, lo: Avx) -> Avx {
            unsafe {
                let below = _mm256_cmp_ps::<_CMP_LT_OQ>(z.0, lo.0);
                Avx(_mm256_andnot_ps(below, self.0))
            }
        }
        #[inline(always)]
        fn sign_select(self, x: Avx, negative: Avx) -> Avx {
            Avx(unsafe { _mm256_blendv_ps(self.0, negative.0, x.0) })
        }
    }
}

/// An activation written once over [`Lanes`].
pub(crate) trait Act {
    fn apply<V: Lanes>(x: V) -> V;
}

pub(crate) struct Identity;
struct Relu;
struct Relu6;
struct Sigmoid;
struct Silu;
struct Gelu;

impl Act for Identity {
    #[inline(always)]
    fn apply<V: Lanes>(x: V) -> V {
        x
    }
}

impl Act for Relu {
    #[inline(always)]
    fn apply<V: Lanes>(x: V) -> V {
        x.at_least(V::splat(0.0))
    }
}

impl Act for Relu6 {
    #[inline(always)]
    fn apply<V: Lanes>(x: V) -> V {
        x.at_least(V::splat(0.0)).at_most(V::splat(6.0))
    }
}

impl Act for Sigmoid {
    #[inline(always)]
    fn apply<V: Lanes>(x: V) -> V {
        let (numerator, denominator) = logistic(x);
        numerator.div(denominator)
    }
}

impl Act for Silu {
    #[inline(always)]
    fn apply<V: Lanes>(x: V) -> V {
        let (numerator, denominator) = logistic(x);
        x.mul(numerator).div(denominator)
    }
}

/// `sigmoid(x)` as a fraction: with `e = exp(−|x|)`, `1 / (1 + e)` for `x ≥ 0` and
/// `e / (1 + e)` below (chosen by the sign bit). `e` is at most 1, so nothing overflows,
/// and the negative side keeps its relative accuracy down to the cutoff, below which `e` is
/// 0: sigmoid(−inf) is then 0 and SiLU(−inf) `−inf·0`, NaN, as the op table's
/// `x·sigmoid(x)` gives.
#[inline(always)]
fn logistic<V: Lanes>(x: V) -> (V, V) {
    let e = exp_nonpositive(x.minus_abs());
    let one = V::splat(1.0);
    (one.sign_select(x, e), one.add(e))
}

/// `exp(z)` for `z ≤ 0` (NaN kept), 0 below [`LOGISTIC_CUTOFF`]: `n = round(z·log2 e)`,
/// `t = z − n·ln 2`, `exp(z) = 2^n·(1 + t·P(t))` with `2^n` built in the exponent bits.
#[inline(always)]
pub(crate) fn exp_nonpositive<V: Lanes>(z: V) -> V {
    let biased = z.mul_add(V::splat(std::f32::consts::LOG2_E), V::splat(LOGISTIC_MAGIC));
    let scale = biased.pow2_of_biased();
    let n = biased.add(V::splat(-LOGISTIC_MAGIC));
    let t = n.minus_ln2_times(z);
    let p = poly(t, &LOGISTIC_POLYNOMIAL);
    t.mul(scale)
        .mul_add(p, scale)
        .zero_where_below(z, V::splat(LOGISTIC_CUTOFF))
}

impl Act for Gelu {
    /// `x · (0.5 + c·P(c²)/Q(c²))` with `c` the clamped `x` ([`GELU_NUMERATOR`]): two
    /// multiplies and an add fewer than `0.5·x·(1 + erf(x·√½))` (ns per element on Zen 4, one
    /// thread, in cache: 0.39 -> 0.35). The factor is zero below the clamp, where the
    /// rational is an ulp short of −0.5 (x·3e-8 for large negative x, −inf at −inf) and
    /// |gelu| < 5e-8: so GELU(−inf) is the op table's `−inf·0`, NaN, as in the code generator.
    #[inline(always)]
    fn apply<V: Lanes>(x: V) -> V {
        let c = x
            .at_least(V::splat(-GELU_CLAMP))
            .at_most(V::splat(GELU_CLAMP));
        let t = c.mul(c);
        let ratio = poly(t, &GELU_NUMERATOR).div(poly(t, &GELU_DENOMINATOR));
        let half_phi = c
            .mul_add(ratio, V::splat(0.5))
            .zero_where_below(x, V::splat(-GELU_CLAMP));
        x.mul(half_phi)
    }
}

/// Horner evaluation of `coefs[0] + coefs[1]·t + …`.
#[inline(always)]
fn poly<V: Lanes>(t: V, coefs: &[f32]) -> V {
    let (&last, rest) = coefs.split_last().expect("a polynomial has coefficients");
    rest.iter()
        .rev()
        .fold(V::splat(last), |acc, &c| acc.mul_add(t, V::splat(c)))
}

/// The code generator's `erf` (`codegen/cpu/math.rs`), step for step: its error is measured
/// here, where the constants live.
#[cfg(test)]
fn erf<V: Lanes>(x: V) -> V {
    let x = x
        .at_least(V::splat(-ERF_CLAMP))
        .at_most(V::splat(ERF_CLAMP));
    let x2 = x.mul(x);
    let p = x.mul(poly(x2, &ERF_NUMERATOR));
    p.div(poly(x2, &ERF_DENOMINATOR))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths this host runs: the portable one, and the 8-lane one where available.
    fn paths() -> Vec<bool> {
        let mut p = vec![false];
        if simd_available() {
            p.push(true);
        }
        p
    }

    /// erf in f64: its Taylor series below 3 (at most 4 digits of cancellation), the
    /// continued fraction of erfc above.
    fn erf64(x: f64) -> f64 {
        let a = x.abs();
        let v = if a < 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut f = a;
            for k in (1..=80).rev() {
                f = a + f64::from(k) / 2.0 / f;
            }
            1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
        };
        v.copysign(x)
    }

    fn reference(act: Activation, x: f64) -> f64 {
        let sigmoid = 1.0 / (1.0 + (-x).exp());
        match act {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::Sigmoid => sigmoid,
            Activation::Silu => x * sigmoid,
            Activation::Gelu => 0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2)),
        }
    }

    fn sweep(lo: f32, hi: f32) -> Vec<f32> {
        let n = 400_001;
        (0..n)
            .map(|k| lo + (hi - lo) * k as f32 / (n - 1) as f32)
            .collect()
    }

    /// `A` over `xs` as rows of 37 (so every row has a tail on both paths).
    fn map<A: Act>(xs: &[f32], simd: bool) -> Vec<f32> {
        let mut out = xs.to_vec();
        let rows = out.chunks_mut(37).map(|r| (r, RowBias::None, None));
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: only asked for where `simd_available`.
            unsafe { avx2::rows::<A>(rows) };
            return out;
        }
        let _ = simd;
        rows.for_each(|(r, b, res)| run_row::<f32, A>(r, b, res));
        out
    }

    /// How [`worst`] measures an error: relative to `|f|`, absolute, or relative to
    /// `max(|f|, 1)` (absolute near 0, relative where the result grows like `x`).
    #[derive(Clone, Copy)]
    enum Error {
        Relative,
        Absolute,
        Scaled,
    }

    /// The largest error of `ys` against `f` over `xs`.
    fn worst(xs: &[f32], ys: &[f32], f: impl Fn(f64) -> f64, kind: Error) -> (f64, f32) {
        xs.iter().zip(ys).fold((0.0, 0.0), |acc, (&x, &y)| {
            let want = f(f64::from(x));
            let scale = match kind {
                Error::Relative => want.abs(),
                Error::Absolute => 1.0,
                Error::Scaled => want.abs().max(1.0),
            };
            let err = (f64::from(y) - want).abs() / scale;
            if err > acc.0 {
                (err, x)
            } else {
                acc
            }
        })
    }

    struct ExpAct;
    impl Act for ExpAct {
        fn apply<V: Lanes>(x: V) -> V {
            exp_nonpositive(x)
        }
    }
    struct ErfAct;
    impl Act for ErfAct {
        fn apply<V: Lanes>(x: V) -> V {
            erf(x)
        }
    }

    /// The largest relative error of [`exp_nonpositive`] over `[LOGISTIC_CUTOFF, 0]`.
    const EXP_BOUND: f64 = 4.0e-7;

    /// The vector builds (8 lanes at a time on 16 or 32 registers, and a whole tile's
    /// registers at once) run the same instructions on each lane: bit-identical results.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_vector_build_computes_the_same_bits() {
        if !simd_available() {
            return;
        }
        fn check<A: Act>(act: Activation) {
            let mut xs = sweep(-20.0, 20.0);
            xs.extend([
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                0.0,
                -0.0,
                -100.0,
            ]);
            xs.truncate(xs.len() / 48 * 48);
            let narrow = map::<A>(&xs, true);
            let bits = |v: &[f32]| v.iter().map(|y| y.to_bits()).collect::<Vec<_>>();
            // SAFETY: AVX2 and FMA were detected, AVX-512F/VL where the wide build runs.
            let tiles: Vec<f32> = xs
                .chunks(48)
                .flat_map(|c| unsafe {
                    use std::arch::x86_64::*;
                    let regs: [__m256; 6] =
                        std::array::from_fn(|i| _mm256_loadu_ps(c[8 * i..].as_ptr()));
                    let mut out = [0.0f32; 48];
                    for (i, v) in activate_tile::<A>(regs).into_iter().enumerate() {
                        _mm256_storeu_ps(out[8 * i..].as_mut_ptr(), v);
                    }
                    out
                })
                .collect();
            assert_eq!(bits(&tiles), bits(&narrow), "{act:?}: a tile at once");
            if wide_available() {
                let mut wide = xs.clone();
                let rows = wide.chunks_mut(37).map(|r| (r, RowBias::None, None));
                unsafe { avx2::rows_wide::<A>(rows) };
                assert_eq!(bits(&wide), bits(&narrow), "{act:?}: the wide build");
            }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn activate_tile<A: Act>(
            regs: [std::arch::x86_64::__m256; 6],
        ) -> [std::arch::x86_64::__m256; 6] {
            avx2::activate_all::<A, 6>(regs)
        }
        struct Check(Activation);
        impl WithAct for Check {
            type Output = ();
            fn call<A: Act>(self) {
                check::<A>(self.0)
            }
        }
        for act in Activation::ALL {
            with_act(act, Check(act));
        }
    }

    #[test]
    fn approximation_errors() {
        for simd in paths() {
            let path = if simd { "avx2+fma" } else { "portable" };
            let xs = sweep(LOGISTIC_CUTOFF, 0.0);
            let (e, at) = worst(&xs, &map::<ExpAct>(&xs, simd), f64::exp, Error::Relative);
            println!("{path} exp(z ≤ 0): max relative error {e:.3e} at {at}");
            assert!(e <= EXP_BOUND, "exp {e} at {at}");
            let xs = sweep(-6.0, 6.0);
            let (e, at) = worst(&xs, &map::<ErfAct>(&xs, simd), erf64, Error::Absolute);
            println!("{path} erf: max absolute error {e:.3e} at {at}");
            assert!(e <= 4.5e-7, "erf {e} at {at}");
            let xs = sweep(-30.0, 30.0);
            let sigmoid = |x| reference(Activation::Sigmoid, x);
            let (e, at) = worst(&xs, &map::<Sigmoid>(&xs, simd), sigmoid, Error::Absolute);
            println!("{path} sigmoid: max absolute error {e:.3e} at {at}");
            assert!(e <= 1.0e-7, "sigmoid {e} at {at}");
            // Where sigmoid is small its relative error stays that of exp.
            let xs = sweep(LOGISTIC_CUTOFF, 0.0);
            let (e, at) = worst(&xs, &map::<Sigmoid>(&xs, simd), sigmoid, Error::Relative);
            println!("{path} sigmoid (x ≤ 0): max relative error {e:.3e} at {at}");
            assert!(e <= EXP_BOUND + 1.2e-7, "sigmoid {e} at {at}");
            let xs = sweep(-10.0, 10.0);
            for (act, ys, bound) in [
                (Activation::Silu, map::<Silu>(&xs, simd), 1.4e-7),
                (Activation::Gelu, map::<Gelu>(&xs, simd), 1.25e-6),
            ] {
                let (e, at) = worst(&xs, &ys, |x| reference(act, x), Error::Scaled);
                println!("{path} {act:?}: max error {e:.3e} of max(|result|, 1) at {at}");
                assert!(e <= bound, "{act:?} {e} at {at}");
            }
        }
    }

    #[test]
    fn special_values_propagate() {
        let xs = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            100.0,
            -100.0,
            0.0,
        ];
        for simd in paths() {
            let e = map::<ExpAct>(&xs.map(|x| -x), simd);
            assert!(e[0].is_nan());
            // 0 at −inf and below the cutoff, 1 at 0.
            assert_eq!([e[1], e[3], e[5]], [0.0, 0.0, 1.0], "{e:?}");
            let at = |act: Activation| {
                let mut ys = xs.to_vec();
                activate_rows_on(
                    act,
                    std::iter::once((&mut ys[..], RowBias::None, None)),
                    simd,
                );
                ys
            };
            let sigmoid = at(Activation::Sigmoid);
            assert_eq!(sigmoid[1..], [1.0, 0.0, 1.0, 0.0, 0.5], "{sigmoid:?}");
            // SiLU(−inf) is −inf·0, NaN; SiLU(−100) ≈ −3.7e-42 is past the cutoff, −0.
            let silu = at(Activation::Silu);
            assert!(silu[2].is_nan(), "{silu:?}");
            assert_eq!(
                [silu[1], silu[3], silu[4], silu[5]],
                [f32::INFINITY, 100.0, 0.0, 0.0]
            );
            for act in Activation::ALL {
                let mut ys = xs.to_vec();
                activate_rows_on(
                    act,
                    std::iter::once((&mut ys[..], RowBias::None, None)),
                    simd,
                );
                assert!(ys[0].is_nan(), "{act:?} of NaN is {}", ys[0]);
            }
            let mut ys = xs.to_vec();
            activate_rows_on(
                Activation::Gelu,
                std::iter::once((&mut ys[..], RowBias::None, None)),
                simd,
            );
            // −inf·0 is NaN at −inf, as in the op table's formula, and below the clamp
            // GELU is −0 (not x times erf's last ulp); erf's approximation at the clamp is 1
            // to within an ulp, times |x|/2, above.
            assert_eq!(ys[1], f32::INFINITY);
            assert!(ys[2].is_nan(), "gelu(-inf) = {}", ys[2]);
            assert_eq!(
                ys[4].to_bits(),
                (-0.0f32).to_bits(),
                "gelu(-100) = {}",
                ys[4]
            );
            for (i, want) in [(3, 100.0f32), (5, 0.0)] {
                let err = (ys[i] - want).abs();
                assert!(err <= 1e-7 * xs[i].abs(), "gelu({}) = {}", xs[i], ys[i]);
            }
        }
    }

    /// Every activation on tiles of every width up to three vectors and beyond (past runs of
    /// four vectors, with single vectors and a tail after them), rows of a strided matrix,
    /// with the bias per row, per column or none, and with or without a residual row (of a
    /// differently strided tensor), against f64.
    #[test]
    fn tiles_match_f64_references() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 16.0 - 8.0
        };
        let (rows, ld) = (5, 80);
        let data: Vec<f32> = (0..rows * ld).map(|_| random()).collect();
        let bias: Vec<f32> = (0..ld).map(|_| random()).collect();
        let res_ld = ld + 3;
        let shortcut: Vec<f32> = (0..rows * res_ld).map(|_| random()).collect();
        for simd in paths() {
            for act in Activation::ALL {
                for cols in (0..=25).chain([33, 40, 64, 71, 80]) {
                    for c0 in [0, ld - cols.max(1)] {
                        for (kind, residual) in (0..3).flat_map(|k| [(k, false), (k, true)]) {
                            let mut out = data.clone();
                            let c1 = c0 + cols;
                            let tile = out.chunks_mut(ld).enumerate().map(|(r, row)| {
                                let b = match kind {
                                    0 => RowBias::None,
                                    1 => RowBias::Scalar(bias[r]),
                                    _ => RowBias::PerColumn(&bias[c0..c1]),
                                };
                                let res = residual.then(|| &shortcut[r * res_ld + c0..][..cols]);
                                (&mut row[c0..c1], b, res)
                            });
                            activate_rows_on(act, tile, simd);
                            for r in 0..rows {
                                for c in 0..ld {
                                    let x = f64::from(data[r * ld + c]);
                                    let got = f64::from(out[r * ld + c]);
                                    if !(c0..c1).contains(&c) {
                                        assert_eq!(got, x, "outside the tile");
                                        continue;
                                    }
                                    let b = match kind {
                                        0 => 0.0,
                                        1 => f64::from(bias[r]),
                                        _ => f64::from(bias[c]),
                                    };
                                    // Each add rounds to f32 first, as in the graph.
                                    let x = (x + b) as f32;
                                    let x = f64::from(if residual {
                                        x + shortcut[r * res_ld + c]
                                    } else {
                                        x
                                    });
                                    let want = reference(act, x);
                                    assert!(
                                        (got - want).abs() <= 2e-6 * want.abs().max(1.0),
                                        "{act:?} simd={simd} cols={cols} c0={c0} bias \
                                         kind {kind} residual {residual}: {got} vs {want} \
                                         at ({r}, {c})"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
