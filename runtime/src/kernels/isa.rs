//! Which x86-64 vector instructions the register kernels use, and the 16-float row they share.
//!
//! The register kernels accumulate tiles of rows of 16 floats: `acc[r] += broadcast(s[r]) · x`
//! per step. With AVX2 a row is two 8-lane registers and each step of a 6-row tile is two
//! loads, six broadcasts and twelve multiply-adds. With AVX-512 a row is one 16-lane
//! register, and the broadcast folds into the multiply-add as an embedded-broadcast memory
//! operand: one load and six instructions for the same work. On Zen 4, which runs 512-bit
//! instructions over its 256-bit units, the peak is the same either way (116 GFLOP/s per
//! core measured for both), but fewer instructions leave more of the out-of-order window to
//! cover cache misses: in an unblocked stand-alone loop over a `[C, K]·[K, P]` product the
//! tile went from 60-84% of peak to 96-101% (K = 256 over 3136 pixels, K = 1024 over 192).
//! The kernels themselves already block for the caches, so there the gain is smaller, and
//! it was measured per kernel before use: the 1x1 and stem kernels (`pointwise`, and
//! `direct`, which shares its tile) took 2-9% less time on EfficientNet's and ConvNeXt's 1x1
//! shapes, ResNet's 64->256 and 512->128 and the 7x7 stem (kernels benchmark, one thread,
//! alternated runs), so they have both builds; the linear layers' kernel (`dense`), whose
//! broadcasts come from six rows of its left operand rather than one packed weight line,
//! took 10-12% more on ConvNeXt-T's MLP shapes, so it stays AVX2. Its AVX2 build compiled
//! with AVX-512VL's 32 registers (still 8 lanes, for GELU's constants) gained 1-2.5% on
//! stages 1-3's fc1 and lost 2-5% on stage 4's products, and the model's sum was unchanged
//! (45.3-45.4 ms both, three alternated `bbc bench --profile` processes each), so it was not
//! kept. `Row16` is the row,
//! written once for both: a kernel is one body compiled twice, behind `#[target_feature]`
//! entry points, and each plan records its build when it is made.
//!
//! [`wide_available`] says whether the AVX-512 build runs: the CPU must report AVX-512F and VL,
//! and `BBC_CPU_ISA=avx2` in the environment caps the kernels at AVX2 (as oneDNN's
//! `ONEDNN_MAX_CPU_ISA` does: on CPUs that lower their clock for 512-bit work, or to compare
//! the two builds); [`with_avx2_only`] does the same for the plans made inside a call.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

/// The environment variable that caps the kernels' instruction set (`avx2`).
pub const ISA_ENV: &str = "BBC_CPU_ISA";

/// Whether the AVX-512 builds of the register kernels run on this CPU (AVX2 and FMA too,
/// and not capped by [`ISA_ENV`]). Plans record the answer when they are made.
pub fn wide_available() -> bool {
    if AVX2_ONLY.with(Cell::get) {
        return false;
    }
    static WIDE: OnceLock<bool> = OnceLock::new();
    *WIDE.get_or_init(|| {
        let capped = std::env::var(ISA_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("avx2"));
        wide_detected() && !capped
    })
}

/// The vector instructions the register kernels use here: `avx512` (16-lane tiles where a
/// kernel gains from them, AVX2 elsewhere), `avx2` or `portable` (no AVX2 and FMA: the
/// `gemm` crate and portable loops).
pub fn name() -> &'static str {
    if wide_available() {
        "avx512"
    } else if crate::kernels::activation::simd_available() {
        "avx2"
    } else {
        "portable"
    }
}

thread_local! {
    /// Set inside [`with_avx2_only`].
    static AVX2_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, the plans it makes on this thread (convolutions, products) recording the AVX2
/// build whatever the CPU has: for comparing the builds in one process (tests, benchmarks).
pub fn with_avx2_only<T>(f: impl FnOnce() -> T) -> T {
    /// Restores the previous setting, also when `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            AVX2_ONLY.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(AVX2_ONLY.with(|c| c.replace(true)));
    f()
}

/// Whether this CPU has AVX-512F and AVX-512VL (masked 8-lane stores; every AVX-512 CPU
/// but Xeon Phi has both), and AVX2 and FMA, whatever the cap.
pub fn wide_detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Sixteen floats in registers: two AVX2 registers (`[__m256; 2]`) or one AVX-512 register
/// (`__m512`). Every method is `#[inline(always)]` with no features of its own, so it
/// compiles to the instructions of the `#[target_feature]` function it is inlined into.
///
/// # Safety
/// The methods are called only from functions built for the type's instructions (AVX2 and
/// FMA for `[__m256; 2]`, AVX-512F as well for `__m512`), on pointers to 16 readable (or
/// writable) floats, or one for [`Row16::mul_add_scalar`]'s scalar.
#[cfg(target_arch = "x86_64")]
pub(crate) trait Row16: Copy {
    /// All zero.
    unsafe fn zero() -> Self;
    /// Sixteen floats from `p`, any alignment.
    unsafe fn load(p: *const f32) -> Self;
    /// Sixteen floats to `p`, any alignment.
    unsafe fn store(self, p: *mut f32);
    /// `self + *s · x`, `*s` broadcast to every lane (fused).
    unsafe fn mul_add_scalar(self, s: *const f32, x: Self) -> Self;
    /// The low and high eight lanes, for the AVX2 epilogue code both builds share.
    unsafe fn halves(self) -> [__m256; 2];
}

#[cfg(target_arch = "x86_64")]
impl Row16 for [__m256; 2] {
    #[inline(always)]
    unsafe fn zero() -> Self {
        [_mm256_setzero_ps(); 2]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))]
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self[0]);
        _mm256_storeu_ps(p.add(8), self[1]);
    }
    #[inline(always)]
    unsafe fn mul_add_scalar(self, s: *const f32, x: Self) -> Self {
        let s = _mm256_broadcast_ss(&*s);
        [
            _mm256_fmadd_ps(s, x[0], self[0]),
            _mm256_fmadd_ps(s, x[1], self[1]),
        ]
    }
    #[inline(always)]
    unsafe fn halves(self) -> [__m256; 2] {
        self
    }
}

#[cfg(target_arch = "x86_64")]
impl Row16 for __m512 {
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self)
    }
    #[inline(always)]
    unsafe fn mul_add_scalar(self, s: *const f32, x: Self) -> Self {
        // The broadcast becomes the multiply-add's `{1to16}` memory operand.
        _mm512_fmadd_ps(_mm512_set1_ps(*s), x, self)
    }
    #[inline(always)]
    unsafe fn halves(self) -> [__m256; 2] {
        let high = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(self));
        [_mm512_castps512_ps256(self), _mm256_castpd_ps(high)]
    }
}
