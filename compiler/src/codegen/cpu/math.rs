//! Inline f32 / f32x4 approximations of the transcendental intrinsics, the same algorithm for
//! scalars and vectors (only `fmul`/`fadd`/`fma`/`fdiv`, clamps and bit tricks, so NaN
//! propagates):
//!
//! * `exp`: Cephes `expf` — range reduction by `n = round(x·log2 e)` with a two-part ln 2,
//!   a degree-5 polynomial, and the scale `2^n` built in the exponent bits as two factors
//!   `2^⌊n/2⌋·2^⌈n/2⌉`, each a normal float for every `n` from −150 to 128: so `n = 128`
//!   stays finite, and below −126 the second product rounds once into the subnormals, as
//!   `e^x` does (down to 0 past −103.97). Inputs are clamped to [−104, 88.72], above which
//!   the result is +inf.
//! * `expm1`: `exp`'s reduction and polynomial, `2^n·(e^r − 1) + (2^n − 1)` without ever
//!   rounding `e^r` against 1, so exact for `n = 0` up to the polynomial; ELU's negative side,
//!   where `exp(x) − 1` had 2e-4 relative error at −2.5e-4, 1e-2 at −1e-6, and gave 0 for
//!   |x| < 3e-8.
//! * `tanh`: Eigen's rational approximation, odd degree 13 over even degree 6, on
//!   [−7.905, 7.905] (tanh is ±1 in f32 beyond).
//! * `erf`: Eigen's rational approximation, odd degree 13 over even degree 8, on [−4, 4].
//! * `sigmoid`: the runtime's native form (`kernels::activation`), `1 / (1 + e)` for
//!   `x ≥ 0` and `e / (1 + e)` below with `e = exp(−|x|)` from a degree-5 minimax
//!   polynomial, 0 below −87.34; nothing overflows.
//!
//! Measured against f64 over dense sweeps (200 001 points; the `approximation_errors` test in
//! `compiler/tests/kernel_jit.rs` recomputes and bounds them), on an x86-64 host with FMA:
//! exp 1.2e-7 and expm1 1.1e-7 maximum relative error on [−86, 88] (expm1 also on [−1, 1]),
//! exp's absolute error in the subnormals half their spacing (it rounds once there);
//! tanh 3.1e-7, erf 3.3e-7 and sigmoid 8.9e-8 maximum absolute error on [−10, 10], [−6, 6]
//! and [−30, 30]; sigmoid 3.8e-7 relative on [−87, 0], where it is small.

// The `erf` and sigmoid constants are defined once, in the runtime, whose native epilogues
// compute the same approximations 8 lanes at a time; `erf`'s are shared with the GPU code
// generators too (WGSL has no `erf`).
pub(crate) use bbc_runtime::kernels::activation::{ERF_CLAMP, ERF_DENOMINATOR, ERF_NUMERATOR};
use bbc_runtime::kernels::activation::{
    LOGISTIC_CUTOFF, LOGISTIC_LN2, LOGISTIC_LN2_HI, LOGISTIC_LN2_LO, LOGISTIC_MAGIC,
    LOGISTIC_POLYNOMIAL,
};
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// `exp` polynomial on the reduced argument, lowest degree first (the terms after `1 + r`).
// Kept as published, beyond f32 precision.
#[allow(clippy::excessive_precision)]
pub(crate) const EXP_POLYNOMIAL: [f32; 6] = [
    5.000_000_1e-1,
    1.666_666_5e-1,
    4.166_579_6e-2,
    8.333_452e-3,
    1.398_2e-3,
    1.987_569_1e-4,
];
/// ln 2 in two parts: `LN2_HI` has few enough bits that `n·LN2_HI` is exact.
pub(crate) const EXP_LN2_HI: f32 = 0.693_359_4;
pub(crate) const EXP_LN2_LO: f32 = -2.121_944_4e-4;
/// `expm1` inputs are clamped to `[EXP_MIN, EXP_OVERFLOW]` (below, `e^x − 1` is −1 in f32),
/// `exp` inputs to `[EXP_ZERO, EXP_OVERFLOW]` (below, `e^x` rounds to 0); above the
/// overflow bound both are +inf.
pub(crate) const EXP_MIN: f32 = -86.0;
pub(crate) const EXP_ZERO: f32 = -104.0;
pub(crate) const EXP_OVERFLOW: f32 = 88.722_83;
/// Adding 1.5·2^23 rounds `x·log2 e` (at most 151 in size after the clamp) to the nearest
/// integer, ties to even, and leaves it in the low mantissa bits.
const EXP_ROUNDER: f32 = 12_582_912.0;

/// `tanh(x) = x·P(x²) / Q(x²)` on `[−TANH_CLAMP, TANH_CLAMP]` (lowest degree first); shared
/// with the GPU code generators, whose dialects lack an accurate enough `tanh`.
pub(crate) const TANH_CLAMP: f32 = 7.905_311;
// Kept as published, beyond f32 precision.
#[allow(clippy::excessive_precision)]
pub(crate) const TANH_NUMERATOR: [f32; 7] = [
    4.893_524_6e-3,
    6.372_619_3e-4,
    1.485_722_4e-5,
    5.122_297e-8,
    -8.604_671_5e-11,
    2.000_187_9e-13,
    -2.760_768_5e-16,
];
pub(crate) const TANH_DENOMINATOR: [f32; 4] =
    [4.893_525e-3, 2.268_434_6e-3, 1.185_347_1e-4, 1.198_258_4e-6];
/// Emits scalar or f32x4 arithmetic with FMA when the target has it.
pub struct Math<'a, 'b> {
    pub b: &'a mut FunctionBuilder<'b>,
    pub ty: Type,
    pub fma: bool,
}

impl Math<'_, '_> {
    pub fn konst(&mut self, v: f32) -> Value {
        let s = self.b.ins().f32const(v);
        if self.ty == types::F32 {
            s
        } else {
            self.b.ins().splat(self.ty, s)
        }
    }

    /// `a·b + c`.
    pub fn mul_add(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fma {
            self.b.ins().fma(a, b, c)
        } else {
            let p = self.b.ins().fmul(a, b);
            self.b.ins().fadd(p, c)
        }
    }

    /// Horner evaluation of `coefs[0] + coefs[1]·t + …` (lowest degree first).
    fn poly(&mut self, t: Value, coefs: &[f32]) -> Value {
        let mut acc = self.konst(*coefs.last().expect("a polynomial has coefficients"));
        for &c in coefs.iter().rev().skip(1) {
            let k = self.konst(c);
            acc = self.mul_add(acc, t, k);
        }
        acc
    }

    /// `x` limited to `[lo, hi]`, NaN kept. Vectors use the compare-and-select form that
    /// x86-64 lowers to one `minps`/`maxps` (with `x` as the operand returned when a compare
    /// involves NaN); Cranelift's own vector `fmin`/`fmax` are eight-instruction sequences
    /// that also order ±0, which a clamp to nonzero bounds does not need.
    fn clamp(&mut self, x: Value, lo: f32, hi: f32) -> Value {
        use cranelift_codegen::ir::condcodes::FloatCC;
        let (l, h) = (self.konst(lo), self.konst(hi));
        if self.ty == types::F32 {
            let x = self.b.ins().fmax(x, l);
            return self.b.ins().fmin(x, h);
        }
        // max: `x < lo ? lo : x`, then min: `hi < x ? hi : x`.
        let below = self.b.ins().fcmp(FloatCC::LessThan, x, l);
        let below = self.b.ins().bitcast(self.ty, MemFlagsData::new(), below);
        let x = self.b.ins().bitselect(below, l, x);
        let above = self.b.ins().fcmp(FloatCC::LessThan, h, x);
        let above = self.b.ins().bitcast(self.ty, MemFlagsData::new(), above);
        self.b.ins().bitselect(above, h, x)
    }

    fn int_ty(&self) -> Type {
        if self.ty == types::F32 {
            types::I32
        } else {
            types::I32X4
        }
    }

    pub fn exp(&mut self, x0: Value) -> Value {
        let (r, p, n_bits) = self.exp_reduced(x0, EXP_ZERO);
        // e^x = 2^n·(1 + r + r²·P(r)) = (…)·2^⌊n/2⌋·2^(n − ⌊n/2⌋). `n_bits` is `n` plus a
        // constant whose low nine bits are zero, so halving it halves `n` (rounding down)
        // with another such constant, which the shifts into the exponent field discard.
        let r2 = self.b.ins().fmul(r, r);
        let one = self.konst(1.0);
        let r1 = self.b.ins().fadd(r, one);
        let y = self.mul_add(p, r2, r1);
        let one_bit = self.b.ins().iconst(types::I32, 1);
        let half = self.b.ins().sshr(n_bits, one_bit);
        let rest = self.b.ins().isub(n_bits, half);
        let (low, high) = (self.power_of_two(half, 127), self.power_of_two(rest, 127));
        let y = self.b.ins().fmul(y, low);
        let y = self.b.ins().fmul(y, high);
        self.exp_overflow(x0, y)
    }

    /// `e^x − 1`, accurate relative to its value near 0 too, where `exp(x) − 1` cancels:
    /// `exp`'s reduction `x = n·ln 2 + r` with `m = r + r²·P(r)` (`e^r − 1`, never rounded
    /// against 1), then `2^n·m + (2^n − 1)` as `2·(s·m + (s − ½))` with `s = 2^(n−1)`. For
    /// `n = 0` (|x| < ½·ln 2) that is `m` exactly; otherwise the result is at least 0.29 in
    /// size and the sum does not cancel.
    pub fn expm1(&mut self, x0: Value) -> Value {
        let (r, p, n_bits) = self.exp_reduced(x0, EXP_MIN);
        let half_scale = self.power_of_two(n_bits, 126);
        let r2 = self.b.ins().fmul(r, r);
        let m = self.mul_add(p, r2, r);
        let half = self.konst(0.5);
        let offset = self.b.ins().fsub(half_scale, half);
        let y = self.mul_add(half_scale, m, offset);
        let y = self.b.ins().fadd(y, y);
        self.exp_overflow(x0, y)
    }

    /// `exp`'s range reduction of `x0` clamped to `[lo, EXP_OVERFLOW]`: `(r, P(r), n_bits)`
    /// with `x = n·ln 2 + r`, `e^r = 1 + r + r²·P(r)`, and `n_bits` the integer bits of
    /// `n + 1.5·2^23` (`n` in its low bits, for [`Math::power_of_two`]).
    fn exp_reduced(&mut self, x0: Value, lo: f32) -> (Value, Value, Value) {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        // Adding `EXP_ROUNDER` (1.5·2^23) rounds `x·log2 e` to the nearest integer, ties to
        // even like `nearest`, and leaves it in the low mantissa bits of `shifted`: cheaper
        // than `nearest` plus a saturating conversion to integers.
        let x = self.clamp(x0, lo, EXP_OVERFLOW);
        let l2e = self.konst(LOG2E);
        let rounder = self.konst(EXP_ROUNDER);
        let shifted = self.mul_add(x, l2e, rounder);
        let n = self.b.ins().fsub(shifted, rounder);
        let (hi, lo) = (self.konst(-EXP_LN2_HI), self.konst(-EXP_LN2_LO));
        let r = self.mul_add(n, hi, x);
        let r = self.mul_add(n, lo, r);
        let p = self.poly(r, &EXP_POLYNOMIAL);
        let ity = self.int_ty();
        let n_bits = self.b.ins().bitcast(ity, MemFlagsData::new(), shifted);
        (r, p, n_bits)
    }

    /// `2^(k + bias − 127)` for the integer `k` in the low bits of `k_bits` (higher bits
    /// anything), built in the exponent field; `k + bias` must lie in 1..=254.
    fn power_of_two(&mut self, k_bits: Value, bias: i64) -> Value {
        let ity = self.int_ty();
        let bias = self.b.ins().iconst(types::I32, bias);
        let bias = if ity == types::I32 {
            bias
        } else {
            self.b.ins().splat(ity, bias)
        };
        let e = self.b.ins().iadd(k_bits, bias);
        let shift = self.b.ins().iconst(types::I32, 23);
        let bits = self.b.ins().ishl(e, shift);
        self.b.ins().bitcast(self.ty, MemFlagsData::new(), bits)
    }

    /// `y`, or +inf where `x0` is past the clamp (the true value overflows).
    fn exp_overflow(&mut self, x0: Value, y: Value) -> Value {
        let limit = self.konst(EXP_OVERFLOW);
        let inf = self.konst(f32::INFINITY);
        self.select_gt(x0, limit, inf, y)
    }

    /// `then` where `a > b`, else `otherwise`.
    fn select_gt(&mut self, a: Value, b: Value, then: Value, otherwise: Value) -> Value {
        use cranelift_codegen::ir::condcodes::FloatCC;
        let c = self.b.ins().fcmp(FloatCC::GreaterThan, a, b);
        if self.ty == types::F32 {
            self.b.ins().select(c, then, otherwise)
        } else {
            let mask = self.b.ins().bitcast(self.ty, MemFlagsData::new(), c);
            self.b.ins().bitselect(mask, then, otherwise)
        }
    }

    pub fn tanh(&mut self, x: Value) -> Value {
        let x = self.clamp(x, -TANH_CLAMP, TANH_CLAMP);
        let x2 = self.b.ins().fmul(x, x);
        let p = self.poly(x2, &TANH_NUMERATOR);
        let p = self.b.ins().fmul(x, p);
        let q = self.poly(x2, &TANH_DENOMINATOR);
        self.b.ins().fdiv(p, q)
    }

    pub fn erf(&mut self, x: Value) -> Value {
        let x = self.clamp(x, -ERF_CLAMP, ERF_CLAMP);
        let x2 = self.b.ins().fmul(x, x);
        let p = self.poly(x2, &ERF_NUMERATOR);
        let p = self.b.ins().fmul(x, p);
        let q = self.poly(x2, &ERF_DENOMINATOR);
        self.b.ins().fdiv(p, q)
    }

    /// `1 / (1 + e)` for `x ≥ 0`, `e / (1 + e)` below, with `e = exp(−|x|)`: the runtime's
    /// native sigmoid (`kernels::activation`), step for step.
    pub fn sigmoid(&mut self, x: Value) -> Value {
        let magnitude = self.b.ins().fabs(x);
        let z = self.b.ins().fneg(magnitude);
        let e = self.exp_nonpositive(z);
        let one = self.konst(1.0);
        let d = self.b.ins().fadd(one, e);
        let zero = self.konst(0.0);
        let numerator = self.select_gt(zero, x, e, one);
        self.b.ins().fdiv(numerator, d)
    }

    /// `exp(z)` for `z ≤ 0`, 0 below `LOGISTIC_CUTOFF`: `2^n·(1 + t·P(t))` with
    /// `n = round(z·log2 e)` (adding `LOGISTIC_MAGIC` rounds it and leaves `n + 127` in the
    /// low mantissa bits, which a shift moves into the exponent field) and `t = z − n·ln 2`.
    fn exp_nonpositive(&mut self, z: Value) -> Value {
        let l2e = self.konst(std::f32::consts::LOG2_E);
        let magic = self.konst(LOGISTIC_MAGIC);
        let biased = self.mul_add(z, l2e, magic);
        let n = self.b.ins().fsub(biased, magic);
        let t = if self.fma {
            let ln2 = self.konst(-LOGISTIC_LN2);
            self.b.ins().fma(n, ln2, z)
        } else {
            let (hi, lo) = (self.konst(-LOGISTIC_LN2_HI), self.konst(-LOGISTIC_LN2_LO));
            let t = self.mul_add(n, hi, z);
            self.mul_add(n, lo, t)
        };
        let p = self.poly(t, &LOGISTIC_POLYNOMIAL);
        let ity = self.int_ty();
        let bits = self.b.ins().bitcast(ity, MemFlagsData::new(), biased);
        let shift = self.b.ins().iconst(types::I32, 23);
        let bits = self.b.ins().ishl(bits, shift);
        let scale = self.b.ins().bitcast(self.ty, MemFlagsData::new(), bits);
        let ts = self.b.ins().fmul(t, scale);
        let e = self.mul_add(ts, p, scale);
        let cutoff = self.konst(LOGISTIC_CUTOFF);
        let zero = self.konst(0.0);
        self.select_gt(cutoff, z, zero, e)
    }
}
