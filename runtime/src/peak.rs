//! This machine's FMA peak, measured: the yardstick `bbc bench` and the kernels benchmark
//! give throughput against.
//!
//! Each thread runs [`CHAINS`] independent multiply-add chains on registers, nothing read or
//! written in memory: twelve chains cover an FMA's latency (4 cycles) on two ports, so the
//! loop issues as many multiply-adds as the cores can retire. The peak is the best of
//! repeated runs over a time budget (a run is about 4 ms), counted as 2 FLOP per lane per
//! multiply-add, so it is the same unit as a model's FLOPs. On Zen 4 the 8-lane and
//! 16-lane loops reach the same figure (116 GFLOP/s per core at 3.6 GHz), because it runs a
//! 512-bit instruction over its two 256-bit halves; on CPUs with two 512-bit FMA units the
//! 16-lane loop reaches twice the 8-lane one. [`fma_peak`] measures both where the CPU has
//! them and keeps the higher: a machine's peak is what its widest vectors reach.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Independent accumulator chains per thread.
pub const CHAINS: usize = 12;

/// Multiply-adds per chain in one run, per lane: each run does the same FLOPs whatever
/// the vector width.
const LANE_STEPS: usize = 20_000_000;

/// A measured peak.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peak {
    /// FLOP per second over all threads, in units of 10⁹.
    pub gflops: f64,
    /// f32 lanes of the vectors that reached it (8 or 16).
    pub lanes: usize,
    pub threads: usize,
}

/// The FMA peak on `threads` threads with vectors of `lanes` f32 (8: AVX2 + FMA, 16:
/// AVX-512F), the best run within about `budget` (at least three runs), or `None` where
/// the CPU lacks those instructions.
pub fn fma_peak_with(threads: usize, lanes: usize, budget: Duration) -> Option<f64> {
    if !has_lanes(lanes) {
        return None;
    }
    let threads = threads.max(1);
    let iters = LANE_STEPS / lanes;
    let run = || {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| black_box(chains(lanes, black_box(iters))));
            }
        })
    };
    run(); // warm-up: thread start, the clock ramping up
    let (start, mut best, mut runs) = (Instant::now(), Duration::MAX, 0);
    while runs < 3 || start.elapsed() < budget {
        let t = Instant::now();
        run();
        best = best.min(t.elapsed());
        runs += 1;
    }
    let flops = (threads * iters * CHAINS * lanes * 2) as f64;
    Some(flops / best.as_secs_f64() / 1e9)
}

/// This machine's FMA peak on `threads` threads: the higher of the 8- and 16-lane loops
/// that the CPU runs, each measured for about `budget`; `None` without AVX2 and FMA.
pub fn fma_peak(threads: usize, budget: Duration) -> Option<Peak> {
    [8, 16]
        .into_iter()
        .filter_map(|lanes| {
            let gflops = fma_peak_with(threads, lanes, budget)?;
            Some(Peak {
                gflops,
                lanes,
                threads: threads.max(1),
            })
        })
        .max_by(|a, b| a.gflops.total_cmp(&b.gflops))
}

fn has_lanes(lanes: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let fma = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        match lanes {
            8 => fma,
            16 => fma && is_x86_feature_detected!("avx512f"),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = lanes;
        false
    }
}

/// Runs the chains `iters` times with vectors of `lanes`; the result keeps them alive.
fn chains(lanes: usize, iters: usize) -> f32 {
    // SAFETY: `fma_peak_with` checked the CPU's features for `lanes` (`has_lanes`).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        if lanes == 16 {
            chains_avx512(iters)
        } else {
            chains_avx2(iters)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (lanes, iters);
        0.0
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chains_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let sum = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x));
    let mut out = [0.0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), sum);
    out.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chains_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    let sum = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x));
    _mm512_reduce_add_ps(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the CPU has AVX2 and FMA the peak is a positive, finite rate reached by a width
    /// it runs, and more threads never measure a lower total than one (on one core the two
    /// threads share it); where it lacks them there is no peak.
    #[test]
    fn peak_is_measured_where_the_cpu_has_the_instructions() {
        let budget = Duration::from_millis(20);
        let Some(one) = fma_peak(1, budget) else {
            assert!(!has_lanes(8));
            assert_eq!(fma_peak_with(1, 8, budget), None);
            return;
        };
        assert!(one.gflops.is_finite() && one.gflops > 0.0, "{one:?}");
        assert!(has_lanes(one.lanes) && one.threads == 1);
        assert_eq!(fma_peak_with(1, 4, budget), None);
        let two = fma_peak(2, budget).expect("the same CPU");
        assert_eq!(two.threads, 2);
        // Generous: a loaded test machine can slow either measurement.
        assert!(two.gflops > 0.5 * one.gflops, "{one:?} {two:?}");
    }
}
