//! Seeded, reproducible random numbers for parameter initialisation and
//! random test inputs.
//!
//! Built on `ChaCha8Rng`, whose output stream is fixed by its seed across
//! platforms and crate versions. Distributions (uniform, Box–Muller normal,
//! rejection-sampled truncated normal) are implemented here on raw `u64`s
//! rather than via `rand`'s distribution types, so the numbers a given seed
//! produces cannot change when `rand` changes its sampling algorithms.

use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Tensor;

/// Consecutive rejections after which truncated-normal sampling gives up on
/// a value and draws it uniformly from the interval instead. Only reachable
/// when the interval holds almost no probability mass (e.g. `[5σ, 6σ]`);
/// it keeps the loop finite for any arguments.
const MAX_REJECTIONS: u32 = 10_000;

/// A seeded random stream.
///
/// Remembers its seed so that [`fork`](Rng::fork) derives children from the
/// seed alone, not from how many numbers have been drawn so far.
#[derive(Debug, Clone)]
pub struct Rng {
    seed: u64,
    inner: ChaCha8Rng,
}

impl Rng {
    /// A stream determined entirely by `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut bytes = [0u8; 32];
        // Expand the 64-bit seed with SplitMix64 so nearby seeds give
        // unrelated ChaCha keys.
        let mut state = seed;
        for chunk in bytes.chunks_exact_mut(8) {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            chunk.copy_from_slice(&splitmix_finish(state).to_le_bytes());
        }
        Rng {
            seed,
            inner: ChaCha8Rng::from_seed(bytes),
        }
    }

    /// The seed this stream was created from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// An independent stream for `key` (e.g. a parameter path).
    ///
    /// Depends only on this stream's seed and `key` — not on numbers already
    /// drawn or on other forks — so initialising one parameter does not
    /// depend on the order in which others are initialised. Forks nest:
    /// `r.fork("a").fork("b")` is itself reproducible.
    pub fn fork(&self, key: &str) -> Rng {
        // Mix before combining so (seed, key) pairs do not cancel by XOR.
        Rng::new(splitmix_finish(
            self.seed ^ splitmix_finish(fnv1a64(key.as_bytes())),
        ))
    }

    /// Next raw 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform01(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// One standard-normal sample (Box–Muller; the paired value is dropped
    /// so the stream carries no hidden state between calls).
    pub fn standard_normal(&mut self) -> f64 {
        self.normal_pair().0
    }

    /// Two independent standard-normal samples.
    fn normal_pair(&mut self) -> (f64, f64) {
        // 1 - u lies in (0, 1], so the log is finite.
        let r = (-2.0 * (1.0 - self.uniform01()).ln()).sqrt();
        let theta = std::f64::consts::TAU * self.uniform01();
        (r * theta.cos(), r * theta.sin())
    }

    /// Fills `t` with samples from U(-bound, bound).
    pub fn fill_uniform(&mut self, t: &mut Tensor, bound: f64) {
        for v in t.iter_mut() {
            *v = ((2.0 * self.uniform01() - 1.0) * bound) as f32;
        }
    }

    /// Fills `t` with samples from N(0, std²).
    pub fn fill_normal(&mut self, t: &mut Tensor, std: f64) {
        let mut spare = None;
        for v in t.iter_mut() {
            // Use both Box–Muller outputs within one fill.
            let z = match spare.take() {
                Some(z) => z,
                None => {
                    let (a, b) = self.normal_pair();
                    spare = Some(b);
                    a
                }
            };
            *v = (z * std) as f32;
        }
    }

    /// Fills `t` with N(0, std²) samples truncated to `[lo, hi]`, by
    /// rejection sampling.
    ///
    /// As in PyTorch's `trunc_normal_`, `lo` and `hi` are absolute values,
    /// not multiples of `std` (PyTorch's defaults are -2 and 2). Bounds given
    /// in the wrong order are swapped.
    pub fn fill_trunc_normal(&mut self, t: &mut Tensor, std: f64, lo: f64, hi: f64) {
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        for v in t.iter_mut() {
            let mut x = None;
            for _ in 0..MAX_REJECTIONS {
                let z = self.standard_normal() * std;
                if (lo..=hi).contains(&z) {
                    x = Some(z);
                    break;
                }
            }
            let x = x.unwrap_or_else(|| lo + (hi - lo) * self.uniform01());
            // Rounding to f32 may step just outside the bounds; clamp back.
            *v = (x as f32).clamp(lo as f32, hi as f32);
        }
    }

    /// A tensor of the given shape filled with N(0, 1) samples, e.g. for
    /// random test inputs.
    pub fn standard_normal_tensor(&mut self, shape: &[usize]) -> Tensor {
        let mut t = Tensor::zeros(ndarray::IxDyn(shape));
        self.fill_normal(&mut t, 1.0);
        t
    }
}

/// 64-bit FNV-1a: fixed and platform-independent, unlike std's `RandomState`.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The SplitMix64 output function: a bijective 64-bit avalanche mix.
fn splitmix_finish(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_values() {
        // Published FNV-1a 64-bit test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
