//! Kernel benchmark: this machine's FMA peak, the pool's dispatch overhead,
//! and GEMM / convolution throughput on ResNet and ConvNeXt layer shapes at 1
//! and 2 threads, as a fraction of the measured peak; depthwise convolutions
//! (ConvNeXt and EfficientNet shapes) per plane and in bands of rows; the native
//! bias + activation epilogues in ns per element.
//!
//! Run with `cargo bench -p bbc-runtime --bench kernels`; after `--`, `quick`
//! shortens the timings and any other word keeps only the GEMM / convolution
//! lines whose name contains it. Every figure is the best of several timed runs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bbc_runtime::kernels::activation::{activate_rows, Activation, RowBias};
use bbc_runtime::kernels::norm::layer_norm_channels;
use bbc_runtime::kernels::{
    conv_transpose2d, gemm, isa, Conv2d, Conv2dShape, ConvStrategy, ConvTranspose2dShape,
    DepthwiseConv2d, Epilogue, Layout, MatMut, MatRef, MaxPool2d, Output, PackedMatrix,
    PanelMatrix,
};
use bbc_runtime::peak;
use bbc_runtime::pool::{Chunking, PoolConfig, ThreadPool};

fn random(len: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Best wall time of `f` over runs filling about `budget` (at least 3 runs).
fn best_time(budget: Duration, mut f: impl FnMut()) -> Duration {
    f(); // warm-up: page faults, lazy dispatch, thread wake-up
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 3 || start.elapsed() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

// ---- FMA peak ----

/// The measured FMA peak on `threads` threads with vectors of `lanes` (`bbc_runtime::peak`).
fn fma_peak(threads: usize, lanes: usize) -> f64 {
    peak::fma_peak_with(threads, lanes, Duration::from_millis(400)).expect("checked: AVX2 + FMA")
}

fn nominal_ghz() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("cpu MHz"))?;
    Some(line.split(':').nth(1)?.trim().parse::<f64>().ok()? / 1000.0)
}

// ---- pool overhead ----

/// Busy-waits for `d` (sleeping would hand the core to another thread).
fn busy(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Per-call wall times of `parallel_for` with one `work`-long chunk per
/// thread, keeping only the calls where every thread ran a chunk (on a busy
/// machine a worker may not get a core in time, and the caller then runs its
/// chunk too); returns those times sorted and the share of calls they were.
fn dispatch_times(pool: &ThreadPool, work: Duration) -> (Vec<Duration>, f64) {
    let calls = 2000;
    let mut joined = Vec::with_capacity(calls);
    for _ in 0..calls {
        let used = std::sync::atomic::AtomicUsize::new(0);
        let t = Instant::now();
        pool.parallel_for(0..pool.threads(), Chunking::PerThread, |_, t| {
            used.fetch_or(1 << t, std::sync::atomic::Ordering::Relaxed);
            busy(work);
        })
        .unwrap();
        let elapsed = t.elapsed();
        if used.into_inner().count_ones() as usize == pool.threads() {
            joined.push(elapsed);
        }
    }
    joined.sort_unstable();
    let share = joined.len() as f64 / calls as f64;
    (joined, share)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ---- contractions ----

struct Report {
    peak_1t: f64,
    filters: Vec<String>,
}

impl Report {
    fn wants(&self, name: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| name.contains(f.as_str()))
    }

    fn line(&self, name: &str, flops: f64, times: &[(usize, Duration)]) {
        let mut out = format!("{name:<46}");
        for &(threads, t) in times {
            let gflops = flops / t.as_secs_f64() / 1e9;
            let frac = gflops / (self.peak_1t * threads as f64);
            out += &format!(
                " | {threads}T {:>8.3} ms {:>6.1} GFLOP/s {:>4.0}%",
                t.as_secs_f64() * 1e3,
                gflops,
                frac * 100.0
            );
        }
        println!("{out}");
    }
}

/// `C[m, n] = A[m, k] · B[k, n]` through the tiled driver, with `b` given
/// either as the packed weight or as a raw PyTorch `[n, k]` weight viewed
/// transposed (which `gemm` then packs on every call).
fn bench_gemm(
    report: &Report,
    pools: &[ThreadPool],
    budget: Duration,
    name: &str,
    m: usize,
    n: usize,
    k: usize,
) {
    if !report.wants(name) {
        return;
    }
    let a = random(m * k);
    let w = random(n * k); // PyTorch layout [out, in]
    let raw = MatRef::row_major(&w, n, k).unwrap().t();
    // Copies enough to outgrow the caches, used in turn: the weight comes from memory, as
    // in a model whose weights outgrow the caches.
    let copies = (64 << 20) / (4 * n * k) + 1;
    let packed: Vec<PackedMatrix> = (0..copies).map(|_| PackedMatrix::pack(raw)).collect();
    let panels: Vec<PanelMatrix> = (0..copies).map(|_| PanelMatrix::pack(raw)).collect();
    let mut c = vec![0.0; m * n];
    let flops = 2.0 * (m * n * k) as f64;
    let a_view = MatRef::row_major(&a, m, k).unwrap();
    let next = std::cell::Cell::new(0);
    let mut variants = vec![
        ("packed", 1),
        ("unpacked [n,k]ᵀ", 1),
        ("packed, cold", copies),
    ];
    if PanelMatrix::supported() {
        variants.extend([("panels", 1), ("panels, cold", copies)]);
    }
    for (label, rotate) in variants {
        let times: Vec<(usize, Duration)> = pools
            .iter()
            .map(|pool| {
                let t = best_time(budget, || {
                    let i = next.get() % rotate;
                    next.set(next.get() + 1);
                    let c = MatMut::row_major(&mut c, m, n).unwrap();
                    match label {
                        "unpacked [n,k]ᵀ" => {
                            gemm(pool, a_view, raw, c, Output::Overwrite, Epilogue::NONE)
                        }
                        l if l.starts_with("panels") => {
                            panels[i].gemm(pool, a_view, c, Epilogue::NONE)
                        }
                        _ => gemm(
                            pool,
                            a_view,
                            packed[i].view(),
                            c,
                            Output::Overwrite,
                            Epilogue::NONE,
                        ),
                    }
                    .unwrap()
                });
                (pool.threads(), t)
            })
            .collect();
        report.line(&format!("{name} ({label})"), flops, &times);
    }
}

/// The `gemm` crate alone, one call over the whole matrix.
fn bench_gemm_crate(report: &Report, budget: Duration, m: usize, n: usize, k: usize) {
    if !report.wants("gemm crate") {
        return;
    }
    let a = random(m * k);
    let b = random(k * n);
    let mut c = vec![0.0; m * n];
    let t = best_time(budget, || unsafe {
        // SAFETY: row-major buffers of the stated sizes.
        ::gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            ::gemm::Parallelism::None,
        )
    });
    report.line(
        &format!("gemm crate alone {m}x{n}x{k}"),
        2.0 * (m * n * k) as f64,
        &[(1, t)],
    );
}

#[allow(clippy::too_many_arguments)]
fn conv_shape(
    c_in: usize,
    c_out: usize,
    size: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    layout: Layout,
) -> Conv2dShape {
    Conv2dShape {
        batch: 1,
        in_channels: c_in,
        out_channels: c_out,
        in_size: [size, size],
        kernel: [kernel, kernel],
        stride: [stride, stride],
        padding: [kernel / 2, kernel / 2],
        dilation: [1, 1],
        groups,
        layout,
    }
}

fn bench_conv(
    report: &Report,
    pools: &[ThreadPool],
    budget: Duration,
    name: &str,
    shape: Conv2dShape,
) {
    if !report.wants(&format!("{name} {:?}", shape.layout)) {
        return;
    }
    let weights = random(
        shape.out_channels * shape.in_channels / shape.groups * shape.kernel[0] * shape.kernel[1],
    );
    // A convolution's usual epilogue: its (folded BatchNorm) bias and the model's
    // activation (EfficientNet's SiLU, whose cost rivals a short reduction's, else a ReLU).
    let bias = random(shape.out_channels);
    let act = if name.starts_with("efficientnet") {
        Activation::Silu
    } else {
        Activation::Relu
    };
    // The strategy `Conv2d::new` picks, and the GEMM it replaces for comparison: im2col
    // beside Winograd, the direct kernel, the channels-last and the subsampling plans, the
    // GEMM over the input in place beside the direct 1x1 kernel.
    let chosen = ConvStrategy::of(&shape).unwrap();
    let mut strategies = vec![chosen];
    match chosen {
        ConvStrategy::ChannelsLast | ConvStrategy::Direct1x1 if shape.kernel == [1, 1] => {
            strategies.push(ConvStrategy::Pointwise)
        }
        // A patchify layer's plan before the gather took it.
        ConvStrategy::Subsample if shape.kernel != [1, 1] => {
            strategies.push(ConvStrategy::ChannelsLast)
        }
        ConvStrategy::Winograd => {
            strategies.extend([ConvStrategy::Im2col, ConvStrategy::ChannelsLast])
        }
        ConvStrategy::Direct | ConvStrategy::ChannelsLast | ConvStrategy::Subsample => {
            strategies.push(ConvStrategy::Im2col)
        }
        ConvStrategy::Pointwise if shape.layout == Layout::Nchw => {
            strategies.push(ConvStrategy::ChannelsLast)
        }
        _ => {}
    }
    // What the AVX2 build picks, beside the kernel only the AVX-512 build has.
    if chosen == ConvStrategy::Lanes1x1 {
        let avx2 = isa::with_avx2_only(|| ConvStrategy::of(&shape).unwrap());
        strategies.push(avx2);
        if avx2 != ConvStrategy::Pointwise {
            strategies.push(ConvStrategy::Pointwise);
        }
    }
    // The chosen strategy again with its weight (from 256 KiB) coming from memory, as in a
    // model whose weights outgrow the caches: copies enough to outgrow them, used in turn.
    let bytes = 4 * weights.len();
    let copies = (64 << 20) / bytes + 1;
    let cold = (bytes >= 256 << 10).then_some((chosen, copies, ", cold"));
    let runs = strategies.iter().map(|&s| (s, 1, "")).chain(cold);
    for (strategy, rotate, cold) in runs {
        let mut scratch_kib = 0;
        let mut scratch_threads = 0;
        let next = std::cell::Cell::new(0);
        let times: Vec<(usize, Duration)> = pools
            .iter()
            .map(|pool| {
                let convs: Vec<Conv2d> = (0..rotate)
                    .map(|_| {
                        Conv2d::with_strategy(shape, &weights, pool.threads(), strategy).unwrap()
                    })
                    .collect();
                let input = random(convs[0].input_len());
                let mut out = vec![0.0; convs[0].output_len()];
                let mut scratch = vec![0.0; convs[0].scratch_len(pool.threads())];
                scratch_kib = scratch.len() * 4 / 1024;
                scratch_threads = pool.threads();
                let t = best_time(budget, || {
                    let i = next.get() % rotate;
                    next.set(next.get() + 1);
                    convs[i]
                        .run(
                            pool,
                            &input,
                            &mut out,
                            &mut scratch,
                            Epilogue::activation(act, Some(&bias)),
                        )
                        .unwrap()
                });
                (pool.threads(), t)
            })
            .collect();
        let flops = shape.flops().unwrap() as f64;
        report.line(
            &format!(
                "{name} {:?} {strategy:?}{cold} +bias+{}",
                shape.layout,
                format!("{act:?}").to_lowercase()
            ),
            flops,
            &times,
        );
        if scratch_kib > 0 {
            println!(
                "{:<46}   scratch {scratch_kib} KiB for {scratch_threads} threads",
                ""
            );
        }
    }
}

fn main() {
    // cargo passes `--bench`; everything else that is not `quick` filters.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let quick = args.iter().any(|a| a == "quick");
    let thread_counts: Vec<usize> = args
        .iter()
        .find_map(|a| a.strip_prefix("threads="))
        .map_or(vec![1, 2], |list| {
            list.split(',').filter_map(|t| t.parse().ok()).collect()
        });
    let filters: Vec<String> = args
        .into_iter()
        .filter(|a| a != "quick" && !a.starts_with("threads="))
        .collect();
    let budget = Duration::from_millis(if quick { 150 } else { 600 });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    println!("== FMA peak ==");
    #[cfg(target_arch = "x86_64")]
    let has_fma = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let has_fma = false;
    if !has_fma {
        println!("no AVX2+FMA on this CPU: skipping the benchmark");
        return;
    }
    let peak_1t = fma_peak(1, 8);
    let both = 2.min(cores);
    let peak_2t = fma_peak(both, 8);
    println!("AVX2 FMA, {} independent chains:", peak::CHAINS);
    println!("  1 thread {peak_1t:.1} GFLOP/s, {both} threads {peak_2t:.1} GFLOP/s");
    println!(
        "  = {:.2} GHz effective x 2 FMA units x 8 lanes x 2 FLOP per thread",
        peak_1t / 32.0
    );
    if let Some(ghz) = nominal_ghz() {
        println!(
            "  at the nominal {ghz:.2} GHz: {cores} cores x 2 x 8 x 2 x {ghz:.2} = {:.1} GFLOP/s",
            cores as f64 * 32.0 * ghz,
        );
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        println!(
            "AVX-512 FMA (zmm), 1 thread: {:.1} GFLOP/s",
            fma_peak(1, 16)
        );
    }
    println!("Percentages below are of the measured 1-thread AVX2 peak x threads.");

    println!("\n== pool dispatch: one 20 us busy chunk per thread, per-call wall time ==");
    let work = Duration::from_micros(20);
    let sleepy = ThreadPool::with_config(PoolConfig {
        threads: 2,
        spin: Duration::ZERO,
    })
    .unwrap();
    let one = ThreadPool::new(1).unwrap();
    let two = ThreadPool::new(2).unwrap();
    // The 1-thread call (inline, no dispatch) is the ideal time of a 2-thread
    // call; the excess of the 2-thread median over it is the dispatch cost.
    let (base, _) = dispatch_times(&one, work);
    let base_median = base[base.len() / 2];
    println!(
        "{:<42} median {:>6.2} us",
        "1 thread (inline: the ideal)",
        micros(base_median)
    );
    for (label, pool) in [
        ("2 threads, workers spinning", &two),
        ("2 threads, workers asleep (futex wake-up)", &sleepy),
    ] {
        let (times, share) = dispatch_times(pool, work);
        if times.is_empty() {
            println!("{label:<42} the worker never got a core in time");
            continue;
        }
        let median = times[times.len() / 2];
        println!(
            "{label:<42} median {:>6.2} us = +{:.2} us over 1 thread (min +{:.2}); worker joined {:.0}% of calls",
            micros(median),
            micros(median) - micros(base_median),
            micros(times[0]) - micros(base_median),
            share * 100.0
        );
    }

    let pools: Vec<ThreadPool> = thread_counts
        .iter()
        .map(|&t| ThreadPool::new(t).unwrap())
        .collect();
    let report = Report { peak_1t, filters };

    println!("\n== GEMM (C = A·W, weight packed once vs raw PyTorch layout) ==");
    bench_gemm_crate(&report, budget, 512, 512, 512);
    bench_gemm(&report, &pools, budget, "square 512x512x512", 512, 512, 512);
    bench_gemm(
        &report,
        &pools,
        budget,
        "convnext_tiny linear 96->384, 3136 px",
        3136,
        384,
        96,
    );
    bench_gemm(
        &report,
        &pools,
        budget,
        "convnext_tiny linear 384->96, 3136 px",
        3136,
        96,
        384,
    );
    bench_gemm(
        &report,
        &pools,
        budget,
        "convnext_tiny s3 linear 384->1536, 196 px",
        196,
        1536,
        384,
    );
    bench_gemm(
        &report,
        &pools,
        budget,
        "convnext_tiny s3 linear 1536->384, 196 px",
        196,
        384,
        1536,
    );
    bench_gemm(
        &report,
        &pools,
        budget,
        "convnext_tiny s4 linear 768->3072, 49 px",
        49,
        3072,
        768,
    );
    bench_gemm(
        &report,
        &pools,
        budget,
        "convnext_tiny s4 linear 3072->768, 49 px",
        49,
        768,
        3072,
    );

    println!("\n== Convolutions (batch 1, epilogue = ReLU on every tile) ==");
    for layout in [Layout::Nchw, Layout::Nhwc] {
        bench_conv(
            &report,
            &pools,
            budget,
            "resnet stem 7x7/2 3->64 @224",
            conv_shape(3, 64, 224, 7, 2, 1, layout),
        );
        bench_conv(
            &report,
            &pools,
            budget,
            "efficientnet stem 3x3/2 3->32 @224",
            conv_shape(3, 32, 224, 3, 2, 1, layout),
        );
        for (name, cin, cout, size, k) in [
            ("convnext_tiny stem 4x4/4 3->96 @224", 3, 96, 224, 4),
            ("convnext_atto stem 4x4/4 3->40 @224", 3, 40, 224, 4),
            ("convnext_tiny down 2x2/2 96->192 @56", 96, 192, 56, 2),
            ("convnext_tiny down 2x2/2 192->384 @28", 192, 384, 28, 2),
            ("convnext_tiny down 2x2/2 384->768 @14", 384, 768, 14, 2),
            ("convnext_atto down 2x2/2 40->80 @56", 40, 80, 56, 2),
            ("convnext_atto down 2x2/2 80->160 @28", 80, 160, 28, 2),
            ("convnext_atto down 2x2/2 160->320 @14", 160, 320, 14, 2),
        ] {
            let mut patchify = conv_shape(cin, cout, size, k, k, 1, layout);
            patchify.padding = [0, 0];
            bench_conv(&report, &pools, budget, name, patchify);
        }
        bench_conv(
            &report,
            &pools,
            budget,
            "resnet18 3x3/2 64->128 @56",
            conv_shape(64, 128, 56, 3, 2, 1, layout),
        );
        bench_conv(
            &report,
            &pools,
            budget,
            "resnet18 3x3 64->64 @56",
            conv_shape(64, 64, 56, 3, 1, 1, layout),
        );
        bench_conv(
            &report,
            &pools,
            budget,
            "resnet18 3x3 128->128 @28",
            conv_shape(128, 128, 28, 3, 1, 1, layout),
        );
        bench_conv(
            &report,
            &pools,
            budget,
            "resnet18 3x3 256->256 @14",
            conv_shape(256, 256, 14, 3, 1, 1, layout),
        );
        bench_conv(
            &report,
            &pools,
            budget,
            "resnet50 3x3/2 256->256 @28",
            conv_shape(256, 256, 28, 3, 2, 1, layout),
        );
        bench_conv(
            &report,
            &pools,
            budget,
            "resnet50 3x3/2 512->512 @14",
            conv_shape(512, 512, 14, 3, 2, 1, layout),
        );
        bench_conv(
            &report,
            &pools,
            budget,
            "resnet50 1x1 256->64 @56",
            conv_shape(256, 64, 56, 1, 1, 1, layout),
        );
        bench_conv(
            &report,
            &pools,
            budget,
            "resnet50 1x1 64->256 @56",
            conv_shape(64, 256, 56, 1, 1, 1, layout),
        );
        for (name, cin, cout, size, stride) in [
            ("convnext_atto pw 320->1280 @7", 320, 1280, 7, 1),
            ("convnext_atto pw 1280->320 @7", 1280, 320, 7, 1),
            ("convnext_atto pw 160->640 @14", 160, 640, 14, 1),
            ("convnext_atto pw 40->160 @56", 40, 160, 56, 1),
            ("efficientnet pw 16->96 @112", 16, 96, 112, 1),
            ("efficientnet pw 32->16 @112", 32, 16, 112, 1),
            // At 256x256 input the maps are powers of two: channel planes 64 KiB apart.
            ("efficientnet pw 32->16 @128", 32, 16, 128, 1),
            ("efficientnet pw 16->96 @128", 16, 96, 128, 1),
            ("efficientnet pw 144->24 @64", 144, 24, 64, 1),
            ("efficientnet pw 24->144 @56", 24, 144, 56, 1),
            ("efficientnet pw 40->240 @28", 40, 240, 28, 1),
            ("efficientnet pw 144->24 @56", 144, 24, 56, 1),
            ("efficientnet pw 192->1152 @7", 192, 1152, 7, 1),
            ("efficientnet pw 1152->192 @7", 1152, 192, 7, 1),
            ("efficientnet pw 112->672 @14", 112, 672, 14, 1),
            ("efficientnet pw 672->112 @14", 672, 112, 14, 1),
            ("efficientnet pw 80->480 @14", 80, 480, 14, 1),
            ("efficientnet pw 480->80 @14", 480, 80, 14, 1),
            ("resnet50 1x1 256->1024 @14", 256, 1024, 14, 1),
            ("resnet50 1x1 1024->512 @14", 1024, 512, 14, 1),
            ("resnet50 1x1 512->128 @28", 512, 128, 28, 1),
            ("resnet50 1x1 1024->256 @14", 1024, 256, 14, 1),
            ("resnet50 1x1 2048->512 @7", 2048, 512, 7, 1),
            ("resnet50 1x1 512->2048 @7", 512, 2048, 7, 1),
            ("resnet50 1x1 512->128 @28", 512, 128, 28, 1),
            ("resnet50 1x1 1024->256 @14", 1024, 256, 14, 1),
            ("resnet50 1x1 2048->512 @7", 2048, 512, 7, 1),
            ("resnet50 1x1 512->2048 @7", 512, 2048, 7, 1),
            ("resnet50 1x1/2 256->512 @56", 256, 512, 56, 2),
            ("resnet50 1x1/2 1024->2048 @14", 1024, 2048, 14, 2),
        ] {
            bench_conv(
                &report,
                &pools,
                budget,
                name,
                conv_shape(cin, cout, size, 1, stride, 1, layout),
            );
        }
        bench_conv(
            &report,
            &pools,
            budget,
            "resnet50 3x3 512->512 @7",
            conv_shape(512, 512, 7, 3, 1, 1, layout),
        );
        // DenseNet's growth convolutions, few output channels over a long reduction, and
        // Res2Net's narrow ones.
        for size in [56, 28, 14, 7] {
            bench_conv(
                &report,
                &pools,
                budget,
                &format!("densenet121 3x3 128->32 @{size}"),
                conv_shape(128, 32, size, 3, 1, 1, layout),
            );
        }
        for (width, size) in [(26, 56), (52, 28), (104, 14), (208, 7)] {
            bench_conv(
                &report,
                &pools,
                budget,
                &format!("res2net50_26w_4s 3x3 {width}->{width} @{size}"),
                conv_shape(width, width, size, 3, 1, 1, layout),
            );
        }
        bench_conv(
            &report,
            &pools,
            budget,
            "3x3 64->64 @14",
            conv_shape(64, 64, 14, 3, 1, 1, layout),
        );
        bench_conv(
            &report,
            &pools,
            budget,
            "3x3 64->64 @7",
            conv_shape(64, 64, 7, 3, 1, 1, layout),
        );
        bench_conv(
            &report,
            &pools,
            budget,
            "convnext_tiny dw 7x7 96 @56",
            conv_shape(96, 96, 56, 7, 1, 96, layout),
        );
    }

    println!("\n== Depthwise NCHW with bias (per-plane tasks, then pixel bands) ==");
    let depthwise = [
        ("convnext_atto dw 7x7 40 @56", 40, 56, 7, 1),
        ("convnext_atto dw 7x7 80 @28", 80, 28, 7, 1),
        ("convnext_atto dw 7x7 160 @14", 160, 14, 7, 1),
        ("convnext_atto dw 7x7 320 @7", 320, 7, 7, 1),
        ("convnext_tiny dw 7x7 96 @56", 96, 56, 7, 1),
        ("convnext_tiny dw 7x7 192 @28", 192, 28, 7, 1),
        ("convnext_tiny dw 7x7 384 @14", 384, 14, 7, 1),
        ("convnext_tiny dw 7x7 768 @7", 768, 7, 7, 1),
        ("efficientnet dw 3x3 32 @112", 32, 112, 3, 1),
        ("efficientnet dw 3x3/2 96 @112", 96, 112, 3, 2),
        ("efficientnet dw 5x5/2 144 @56", 144, 56, 5, 2),
        ("efficientnet dw 5x5 480 @14", 480, 14, 5, 1),
        ("efficientnet dw 3x3 1152 @7", 1152, 7, 3, 1),
    ];
    for (name, channels, size, kernel, stride) in depthwise {
        let shape = conv_shape(
            channels,
            channels,
            size,
            kernel,
            stride,
            channels,
            Layout::Nchw,
        );
        for bands in [false, true] {
            bench_depthwise(&report, &pools, budget, name, shape, bands);
        }
        if name.starts_with("convnext") {
            for norm in [NormAfter::InPlace, NormAfter::ChannelsLast, NormAfter::Pass] {
                bench_depthwise_norm(&report, &pools, budget, name, shape, norm);
            }
        }
    }

    println!(
        "\n== Native epilogues: bias per row + activation on a 96 x 3136 NCHW output, \
         1 thread, in cache =="
    );
    for act in Activation::ALL {
        bench_activation(&report, budget, act);
    }

    println!("\n== Transposed convolutions (NCHW, bias + ReLU on each finished block) ==");
    for (name, cin, cout, size) in [
        ("decoder 4x4/2 64->32 @28", 64, 32, 28),
        ("decoder 4x4/2 128->64 @32", 128, 64, 32),
        ("decoder 4x4/2 32->3 @64", 32, 3, 64),
    ] {
        let shape = ConvTranspose2dShape {
            batch: 1,
            in_channels: cin,
            out_channels: cout,
            groups: 1,
            in_hw: [size, size],
            out_hw: [2 * size, 2 * size],
            k: [4, 4],
            stride: [2, 2],
            pad: [1, 1],
            dilation: [1, 1],
        };
        bench_conv_transpose(&report, &pools, budget, name, shape);
    }

    println!("\n== Max pooling (NCHW) ==");
    bench_max_pool(
        &report,
        &pools,
        budget,
        "resnet stem pool 3x3/2 64 @112",
        MaxPool2d {
            planes: 64,
            in_size: [112, 112],
            out_size: [56, 56],
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
        },
    );
}

/// A transposed convolution with a bias and ReLU.
fn bench_conv_transpose(
    report: &Report,
    pools: &[ThreadPool],
    budget: Duration,
    name: &str,
    shape: ConvTranspose2dShape,
) {
    if !report.wants(name) {
        return;
    }
    let (x, w, bias) = (
        random(shape.input_len()),
        random(shape.weight_len()),
        random(shape.out_channels),
    );
    let mut out = vec![0.0; shape.output_len()];
    let times: Vec<(usize, Duration)> = pools
        .iter()
        .map(|pool| {
            let mut scratch = vec![0.0; shape.scratch_len(pool.threads())];
            let epilogue = Epilogue::activation(Activation::Relu, Some(&bias));
            let t = best_time(budget, || {
                conv_transpose2d(pool, &shape, &x, &w, &mut out, &mut scratch, epilogue).unwrap();
                black_box(&out);
            });
            (pool.threads(), t)
        })
        .collect();
    report.line(name, shape.flops() as f64, &times);
}

/// A max pooling over fresh input each call (the layer reads what the convolution before it
/// just wrote); GB/s counts the input read and the output written once.
fn bench_max_pool(
    report: &Report,
    pools: &[ThreadPool],
    budget: Duration,
    name: &str,
    shape: MaxPool2d,
) {
    if !report.wants(name) {
        return;
    }
    let input = random(shape.input_len());
    let mut output = vec![0.0; shape.output_len()];
    let mut line = format!("{name:<46}");
    for pool in pools {
        let mut scratch = vec![0.0; shape.scratch_len(pool.threads())];
        let t = best_time(budget, || {
            shape
                .run(pool, black_box(&input), &mut output, &mut scratch)
                .unwrap();
            black_box(&output);
        });
        let bytes = 4.0 * (shape.input_len() + shape.output_len()) as f64;
        line += &format!(
            " | {}T {:>9.3} ms {:>6.1} GB/s",
            pool.threads(),
            t.as_secs_f64() * 1e3,
            bytes / t.as_secs_f64() / 1e9
        );
    }
    println!("{line}");
}

/// ns per element of `act(x + bias[row])` on tiles of a 96 x 3136 output (56x56 pixels):
/// the same tile shapes as the generated epilogues' throughput test in the compiler
/// (`contraction_epilogue_throughput`), each run repeatedly on the first tile, in cache, as
/// after the GEMM writes it.
fn bench_activation(report: &Report, budget: Duration, act: Activation) {
    let label = format!("activation {act:?}");
    if !report.wants(&label) {
        return;
    }
    let (rows, cols) = (96, 3136);
    let mut out: Vec<f32> = random(rows * cols).iter().map(|v| v * 16.0).collect();
    let bias = random(rows);
    let mut line = format!("{label:<22} ns/element by tile");
    for (tile_rows, tile_cols) in [(96, 3136), (96, 640), (16, 3136), (96, 8)] {
        let calls = (1 << 20) / (tile_rows * tile_cols) + 1;
        let t = best_time(budget, || {
            // In place, call after call, like the compiler's measurement: the bias keeps the
            // values away from subnormals.
            for _ in 0..calls {
                let tile = out
                    .chunks_mut(cols)
                    .take(tile_rows)
                    .zip(&bias)
                    .map(|(row, &b)| (&mut row[..tile_cols], RowBias::Scalar(b)));
                activate_rows(act, tile);
            }
            black_box(&out);
        });
        let ns = t.as_secs_f64() * 1e9 / (calls * tile_rows * tile_cols) as f64;
        line += &format!(", {tile_rows}x{tile_cols}: {ns:.3}");
    }
    println!("{line}");
}

/// How ConvNeXt's LayerNorm over channels follows its depthwise convolution.
#[derive(Clone, Copy, PartialEq)]
enum NormAfter {
    /// On each finished band of output rows over all channels, in place (`layer_norm2d`).
    InPlace,
    /// On each finished band, from the product into a channels-last output (`layer_norm`
    /// over the permute, ConvNeXt-T's spelling).
    ChannelsLast,
    /// The convolution in per-plane tasks, then the norm over the whole output.
    Pass,
}

/// ConvNeXt's depthwise convolution and the LayerNorm over channels after it.
fn bench_depthwise_norm(
    report: &Report,
    pools: &[ThreadPool],
    budget: Duration,
    name: &str,
    shape: Conv2dShape,
    norm: NormAfter,
) {
    let label = format!(
        "{name} +norm {}",
        match norm {
            NormAfter::InPlace => "in bands",
            NormAfter::ChannelsLast => "in bands, channels-last",
            NormAfter::Pass => "after planes",
        }
    );
    if !report.wants(&label) {
        return;
    }
    let taps = shape.kernel[0] * shape.kernel[1];
    let c = shape.out_channels;
    let (weights, bias) = (random(c * taps), random(c));
    let (gamma, beta) = (random(c), random(c));
    let mut conv = DepthwiseConv2d::new(shape, &weights)
        .and_then(|k| k.with_bias(&bias))
        .unwrap();
    if norm != NormAfter::Pass {
        conv = conv.with_pixel_bands();
    }
    let [h, w] = shape.in_size;
    let input = random(shape.batch * shape.in_channels * h * w);
    let (mut out, mut normed) = (vec![0.0; conv.output_len()], vec![0.0; conv.output_len()]);
    let pixels = conv.output_len() / (shape.batch * c);
    let times: Vec<(usize, Duration)> = pools
        .iter()
        .map(|pool| {
            let mut scratch = vec![0.0; conv.scratch_len(pool.threads())];
            let t = best_time(budget, || match norm {
                NormAfter::InPlace => {
                    let epilogue = Epilogue::channel_norm(Some(&gamma), Some(&beta), 1e-6);
                    conv.run(pool, &input, &mut out, &mut scratch, epilogue)
                        .unwrap();
                }
                NormAfter::ChannelsLast => {
                    // SAFETY: `normed` has the product's size and only the epilogue
                    // writes it.
                    let epilogue = unsafe {
                        Epilogue::channel_norm_channels_last(
                            normed.as_mut_ptr(),
                            pixels,
                            Some(&gamma),
                            Some(&beta),
                            1e-6,
                        )
                    };
                    conv.run(pool, &input, &mut out, &mut scratch, epilogue)
                        .unwrap();
                }
                NormAfter::Pass => {
                    conv.run(pool, &input, &mut out, &mut scratch, Epilogue::NONE)
                        .unwrap();
                    layer_norm_channels(
                        pool,
                        &out,
                        &mut normed,
                        [shape.batch, c, pixels],
                        Some(&gamma),
                        Some(&beta),
                        1e-6,
                    )
                    .unwrap();
                }
            });
            (pool.threads(), t)
        })
        .collect();
    report.line(&label, shape.flops().unwrap() as f64, &times);
}

/// A depthwise convolution with its bias, no epilogue: per-plane tasks, or bands of rows
/// over all channels (the tiling a fused channel normalisation needs).
fn bench_depthwise(
    report: &Report,
    pools: &[ThreadPool],
    budget: Duration,
    name: &str,
    shape: Conv2dShape,
    bands: bool,
) {
    // EfficientNet's depthwise convolutions are followed by a SiLU, which runs on each
    // finished tile; ConvNeXt's by a LayerNorm (not measured here).
    let silu = name.starts_with("efficientnet");
    let label = format!(
        "{name} {}{}",
        if bands { "bands" } else { "planes" },
        if silu { " +silu" } else { "" }
    );
    if !report.wants(&label) {
        return;
    }
    let taps = shape.kernel[0] * shape.kernel[1];
    let weights = random(shape.out_channels * taps);
    let bias = random(shape.out_channels);
    let mut conv = DepthwiseConv2d::new(shape, &weights)
        .and_then(|c| c.with_bias(&bias))
        .unwrap();
    if bands {
        conv = conv.with_pixel_bands();
    }
    let [h, w] = shape.in_size;
    let input = random(shape.batch * shape.in_channels * h * w);
    let mut out = vec![0.0; conv.output_len()];
    let times: Vec<(usize, Duration)> = pools
        .iter()
        .map(|pool| {
            let mut scratch = vec![0.0; conv.scratch_len(pool.threads())];
            let t = best_time(budget, || {
                let epilogue = if silu {
                    Epilogue::activation(Activation::Silu, None)
                } else {
                    Epilogue::NONE
                };
                conv.run(pool, &input, &mut out, &mut scratch, epilogue)
                    .unwrap()
            });
            (pool.threads(), t)
        })
        .collect();
    report.line(&label, shape.flops().unwrap() as f64, &times);
}
