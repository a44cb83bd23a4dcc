//! `bbc bench`: compile a model once and time repeated inferences on seeded random inputs:
//! compile time by stage, median/p90/min latency, GFLOP/s from the model's FLOPs (on the cpu
//! target also as a share of this machine's FMA peak, measured after the runs), the planned
//! activation arena and the nodes without a kernel. `--json` prints one object for scripts.
//! On a GPU target (`--target gpu|cuda`) a timed run is one whole inference as a caller sees
//! it: inputs uploaded, every kernel launched, outputs read back.

use super::run::{build, compile_options, ordered, DataArgs, EngineArgs};
use super::{print, CliResult, OptArgs, SpecArgs};
use bbc::compiler::stats;
use bbc::runtime::peak::fma_peak;
use bbc::{Model, StepTime, Target};
use clap::Args;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

/// Most timed (or warm-up) runs `bench` takes: a bound on the samples it keeps, far beyond
/// any useful measurement.
const MAX_RUNS: u64 = 1_000_000;

/// How long the FMA peak is measured for, per vector width (`bbc_runtime::peak`).
const PEAK_BUDGET: Duration = Duration::from_millis(100);

/// Time a model: compile it once, then run it repeatedly.
///
/// Inputs come from --input files or are drawn from N(0, 1) with --seed; weights come from
/// --weights or seeded initialisation. Reports the compile time (spec text to a runnable
/// executable) of every stage: elaborate, optimize, lowering, jit, prepare (values computed
/// from the weights, such as folded BatchNorm), weights (packing them for the kernels) and
/// planning, and on the cpu target how much of it went to faulting in fresh memory for
/// large buffers; reading or initialising the weights happens before and is reported apart. Then
/// the median, 90th percentile and minimum latency of the timed runs, GFLOP/s (the model's
/// FLOPs as `bbc stats` counts them over the median latency; on the cpu target also as a
/// share of this machine's FMA peak on as many threads, measured after the timed runs with
/// independent multiply-add chains in registers), the planned activation arena, the size of
/// the packed weights, and the nodes that run as host code, with why. The graph is optimised at -O2
/// unless -O is given. On --target cuda, products run on tensor cores (TF32) where their
/// sizes allow.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub spec: SpecArgs,

    #[command(flatten)]
    pub opt: OptArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub data: DataArgs,

    /// Timed runs (at most a million: each one's time is kept for the percentiles).
    #[arg(long, value_name = "K", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=MAX_RUNS))]
    pub runs: u64,

    /// Untimed runs before the timed ones (page faults, caches, waking the threads); at most
    /// a million.
    #[arg(long, value_name = "K", default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=MAX_RUNS))]
    pub warmup: u64,

    /// Also list the N slowest kernels, timed over the runs (on the gpu target, where the
    /// device has timestamp queries): the mean per run, and on the cpu target the fastest
    /// run's time too, with the FLOPs of the node the kernel is named after and the share
    /// of this machine's FMA peak its fastest run reached (FLOPs as `bbc stats` counts
    /// them: a Winograd convolution does fewer, so it can pass 100%). With --json, as the
    /// report's `profile` object.
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "interp",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub profile: Option<usize>,

    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
}

/// A compiled model and the buffers it reads and writes on every timed run.
struct Engine {
    model: Model,
    inputs: Vec<Vec<f32>>,
    outputs: Vec<Vec<f32>>,
}

impl Engine {
    fn run(&mut self) -> CliResult {
        let ins: Vec<&[f32]> = self.inputs.iter().map(Vec::as_slice).collect();
        let mut outs: Vec<&mut [f32]> = self.outputs.iter_mut().map(Vec::as_mut_slice).collect();
        Ok(self.model.run_into(&ins, &mut outs)?)
    }
}

/// Median, 90th percentile (nearest rank) and minimum of `times`, in milliseconds.
fn percentiles(times: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    let p90 = ms[((n * 9).div_ceil(10)).max(1) - 1];
    (median, p90, ms[0])
}

/// `\r`-updated progress on stderr, only when it is a terminal.
struct Progress(bool);

impl Progress {
    fn show(&self, text: &str) {
        if self.0 {
            let _ = write!(std::io::stderr(), "\r{text:<40}");
        }
    }

    fn clear(&self) {
        self.show("");
        if self.0 {
            let _ = write!(std::io::stderr(), "\r");
        }
    }
}

fn ms(t: Duration) -> f64 {
    t.as_secs_f64() * 1e3
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

pub fn main(args: &BenchArgs) -> CliResult {
    args.engine.check()?;
    let started = Instant::now();
    let (program, model) = args.spec.build()?;
    let mut stages: Vec<(&str, Duration)> = vec![("elaborate", started.elapsed())];
    super::check_memory(&model.graph)?;
    // Reading (or seeding) the checkpoint is not compilation: timed, reported apart.
    let started = Instant::now();
    let (weights, inputs) = args.data.load(&program, &model)?;
    let load = started.elapsed();
    let model_stats = stats::stats(&model.graph);
    let flops = model_stats.flops;

    let target = args.engine.engine();
    let opts =
        compile_options(&args.spec, &args.opt, &args.engine)?.tensor_cores(target == Target::Cuda);
    let compiled = build(&opts, &model, &weights)?;
    stages.extend(compiled.compile_times());
    // Fails before the runs where the device cannot time kernels.
    compiled.set_profiling(args.profile.is_some())?;
    let ins = ordered(&compiled, &inputs)?
        .into_iter()
        .map(|t| t.iter().copied().collect())
        .collect();
    let outs = compiled
        .outputs()
        .iter()
        .map(|o| vec![0.0; o.len()])
        .collect();
    let mut engine = Engine {
        model: compiled,
        inputs: ins,
        outputs: outs,
    };

    let progress = Progress(std::io::stderr().is_terminal());
    let (warmup, runs) = (args.warmup as usize, args.runs as usize);
    for i in 0..warmup {
        progress.show(&format!("warm-up {}/{warmup}", i + 1));
        engine.run()?;
    }
    // Profile the timed runs only (turning profiling on again resets it).
    engine.model.set_profiling(args.profile.is_some())?;
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        progress.show(&format!("run {}/{runs}", i + 1));
        let t = Instant::now();
        engine.run()?;
        times.push(t.elapsed());
    }
    progress.clear();

    let (median, p90, min) = percentiles(&times);
    let compile: Duration = stages.iter().map(|s| s.1).sum();
    let gflops = flops as f64 / (median / 1e3) / 1e9;
    let compiled = &engine.model;
    let gpu_plan = compiled.gpu_plan();
    let engine_name = target.name();
    let (threads, arena, fallbacks) = match (compiled.exec_stats(), &gpu_plan) {
        (Some(s), _) => (s.threads, s.arena_bytes, s.fallbacks.len()),
        (None, Some(plan)) => (0, plan.arena_len * 4, 0),
        // The interpreter holds every live value separately: the static peak of `bbc stats`.
        (None, None) => (1, stats::stats(compiled.graph()).peak_bytes as usize, 0),
    };

    // Which build of the CPU kernels ran (`BBC_CPU_ISA=avx2` caps it).
    let cpu_kernels = compiled
        .exec_stats()
        .map(|_| bbc::runtime::kernels::isa::name());
    // The yardstick for the throughput, measured after the timed runs on as many threads.
    let peak = compiled
        .exec_stats()
        .and_then(|_| fma_peak(threads, PEAK_BUDGET));
    let yardstick = Yardstick::new(model_stats, peak.map(|p| p.gflops));
    if args.json {
        let stage_ms: serde_json::Map<String, serde_json::Value> = stages
            .iter()
            .map(|(name, t)| (name.to_string(), serde_json::json!(ms(*t))))
            .collect();
        let device = match compiled.device_name() {
            Some(name) => serde_json::json!(name),
            None => serde_json::Value::Null,
        };
        let mut report = serde_json::json!({
            "model": model.model,
            "engine": engine_name,
            "device": device,
            "median_ms": median,
            "p90_ms": p90,
            "min_ms": min,
            "compile_ms": ms(compile),
            "compile_stages_ms": stage_ms,
            "weights_load_ms": ms(load),
            "gflops": gflops,
            "flops": flops,
            "fma_peak_gflops": peak.map(|p| p.gflops),
            "peak_arena_bytes": arena,
            "fallback_nodes": fallbacks,
            "threads": if threads == 0 { serde_json::Value::Null } else { threads.into() },
            "cpu_kernels": cpu_kernels,
            "runs": runs,
            "samples_ms": times.iter().map(|t| ms(*t)).collect::<Vec<_>>(),
        });
        if let Some(s) = compiled.exec_stats() {
            report["packed_weight_bytes"] = s.packed_weight_bytes.into();
            report["compile_faulted_bytes"] = s.faulted.bytes.into();
            report["compile_faulting_ms"] = ms(s.faulted.time).into();
        }
        if let Some(n) = args.profile {
            report["profile"] = profile_json(compiled.profile(), n, runs, &yardstick);
        }
        return print(&format!("{report}\n"));
    }

    let mut out = String::new();
    let resources = match compiled.device_name() {
        Some(name) => name.to_string(),
        None => {
            let plural = if threads == 1 { "" } else { "s" };
            match cpu_kernels {
                Some(isa) => format!("{threads} thread{plural} ({isa} kernels)"),
                None => format!("{threads} thread{plural}"),
            }
        }
    };
    let _ = writeln!(
        out,
        "bench {} ({}) on {engine_name}, {resources}, {runs} runs after {warmup} warm-up",
        model.model,
        args.spec.spec.display(),
    );
    let stage_list: Vec<String> = stages
        .iter()
        .map(|(name, t)| format!("{name} {:.1}", ms(*t)))
        .collect();
    let _ = writeln!(
        out,
        "  compile   {:.1} ms  ({})",
        ms(compile),
        stage_list.join(", ")
    );
    if let Some(f) = compiled.exec_stats().map(|s| s.faulted) {
        if f.bytes > 0 {
            let _ = writeln!(
                out,
                "            {:.1} ms of it faulting in {} of fresh memory for large buffers",
                ms(f.time),
                mib(f.bytes)
            );
        }
    }
    let _ = writeln!(
        out,
        "  weights   {} in {:.1} ms, before and not part of the compile time",
        if args.data.weights.is_some() {
            "read from the checkpoint"
        } else {
            "initialised from the seed"
        },
        ms(load)
    );
    let _ = writeln!(
        out,
        "  latency   median {median:.3} ms  p90 {p90:.3} ms  min {min:.3} ms"
    );
    let _ = write!(
        out,
        "  compute   {:.3} GFLOP per inference, {gflops:.2} GFLOP/s at the median",
        flops as f64 / 1e9
    );
    let _ = match peak {
        Some(p) => writeln!(
            out,
            ": {:.0}% of this machine's FMA peak ({:.1} GFLOP/s on {} thread{}, measured with \
             {}-lane vectors), at which the model's FLOPs take {:.3} ms",
            100.0 * gflops / p.gflops,
            p.gflops,
            p.threads,
            if p.threads == 1 { "" } else { "s" },
            p.lanes,
            flops as f64 / p.gflops / 1e6,
        ),
        None => writeln!(out),
    };
    match (compiled.exec_stats(), &gpu_plan) {
        (Some(s), _) => {
            let _ = writeln!(
                out,
                "  memory    arena {} (lower bound {}), scratch {}, weights packed {}, weights \
                 kept unpacked {}",
                mib(s.arena_bytes),
                mib(s.arena_lower_bound),
                mib(s.scratch_bytes),
                mib(s.packed_weight_bytes),
                mib(s.constant_bytes)
            );
            let _ = writeln!(
                out,
                "  kernels   {} per inference: {} loop, {} conv, {} gemm, {} pool, {} norm, {} \
                 reference; {} values prepared at load, {} KiB of code ({} kernels reuse \
                 identical code, {} epilogues run natively, {} concatenations written in place)",
                s.steps(),
                s.loop_kernels,
                s.conv_kernels,
                s.gemm_kernels,
                s.pool_kernels,
                s.norm_kernels,
                s.fallbacks.len(),
                s.prepared_values,
                s.code_bytes / 1024,
                s.reused_kernels,
                s.native_epilogues,
                s.concats_in_place
            );
            for f in &s.fallbacks {
                let _ = writeln!(out, "  fallback  {} ({}): {}", f.node, f.op, f.reason);
            }
            if let Some(n) = args.profile {
                let what = "mean per timed run";
                write_profile(&mut out, compiled.profile(), n, runs, what, &yardstick);
            }
        }
        (None, Some(plan)) => {
            let constants: BTreeMap<&str, usize> = plan
                .buffers
                .iter()
                .filter_map(|b| match &b.place {
                    bbc::runtime::gpu::Place::Constant { key } => Some((key.as_str(), b.len)),
                    bbc::runtime::gpu::Place::Arena { .. } => None,
                })
                .collect();
            let constants = constants.values().sum::<usize>() * 4;
            let _ = writeln!(
                out,
                "  memory    arena {}, constants {}",
                mib(arena),
                mib(constants)
            );
            let _ = writeln!(
                out,
                "  kernels   {} launches per inference, {} distinct kernels",
                plan.launches.len(),
                plan.kernels.len()
            );
            if let Some(n) = args.profile {
                let what = "mean device time per timed run";
                write_profile(&mut out, compiled.profile(), n, runs, what, &yardstick);
            }
        }
        (None, None) => {
            let _ = writeln!(out, "  memory    peak live activations {}", mib(arena));
        }
    }
    print(&out)
}

/// What a profiled step's time is measured against: the FLOPs of the graph node each step
/// is named after (the contraction a fused group is built around; as `bbc stats` counts
/// them, so a Winograd convolution's are its direct count), and this machine's FMA peak.
struct Yardstick {
    flops: HashMap<String, u64>,
    peak_gflops: Option<f64>,
}

impl Yardstick {
    fn new(model: stats::Stats, peak_gflops: Option<f64>) -> Yardstick {
        let flops = model
            .layers
            .into_iter()
            .filter(|l| l.flops > 0)
            .map(|l| (l.name, l.flops))
            .collect();
        Yardstick { flops, peak_gflops }
    }

    /// A step's FLOPs, its GFLOP/s in its fastest run and that as a share of the peak,
    /// where they are known.
    fn rate(&self, step: &StepTime) -> (Option<u64>, Option<f64>, Option<f64>) {
        let flops = self.flops.get(&step.step).copied();
        let gflops = flops
            .zip(step.fastest)
            .filter(|(_, t)| !t.is_zero())
            .map(|(f, t)| f as f64 / t.as_secs_f64() / 1e9);
        let share = gflops.zip(self.peak_gflops).map(|(g, p)| g / p);
        (flops, gflops, share)
    }
}

/// The profile for `--json`: the total per run of every step, then the `n` slowest steps,
/// each with its mean per run and, on the cpu target, its fastest run (null elsewhere) and
/// that run's GFLOP/s and share of the FMA peak where the step's FLOPs are known.
fn profile_json(
    steps: Vec<StepTime>,
    n: usize,
    runs: usize,
    yardstick: &Yardstick,
) -> serde_json::Value {
    let per_run = |t: Duration| ms(t) / runs as f64;
    let total: f64 = steps.iter().map(|s| per_run(s.time)).sum();
    let slowest: Vec<serde_json::Value> = steps
        .into_iter()
        .take(n)
        .map(|s| {
            let (flops, gflops, share) = yardstick.rate(&s);
            serde_json::json!({
                "step": s.step,
                "kind": s.kind,
                "mean_ms": per_run(s.time),
                "fastest_ms": s.fastest.map(ms),
                "flops": flops,
                "fastest_gflops": gflops,
                "fastest_peak_share": share,
            })
        })
        .collect();
    serde_json::json!({ "total_ms": total, "slowest": slowest })
}

/// The `n` slowest steps of a profile over `runs` timed runs (each with its kind where the
/// engine reports one, and on the cpu target its fastest run, and that run's share of the
/// FMA peak where the step's FLOPs are known), after the total time of all of them.
fn write_profile(
    out: &mut String,
    steps: Vec<StepTime>,
    n: usize,
    runs: usize,
    what: &str,
    yardstick: &Yardstick,
) {
    let per_run = |t: Duration| ms(t) / runs as f64;
    let total: f64 = steps.iter().map(|s| per_run(s.time)).sum();
    let _ = writeln!(
        out,
        "  slowest kernels ({what}; all kernels {total:.3} ms):"
    );
    for step in steps.into_iter().take(n) {
        let kind = step.kind.map(|k| format!("{k:<9}  ")).unwrap_or_default();
        // The fastest run beside the mean: on a busy host the mean also counts the runs
        // other work delayed.
        let fastest = step
            .fastest
            .map(|f| format!("  (fastest {:>7.3})", ms(f)))
            .unwrap_or_default();
        let rate = match yardstick.rate(&step) {
            (Some(f), _, Some(share)) => {
                format!(
                    "  [{:.0} MFLOP, {:.0}% of peak]",
                    f as f64 / 1e6,
                    100.0 * share
                )
            }
            (Some(f), Some(g), None) => format!("  [{:.0} MFLOP, {g:.1} GFLOP/s]", f as f64 / 1e6),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "    {:>9.3} ms{fastest}  {kind}{}{rate}",
            per_run(step.time),
            step.step
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let t = |v: &[u64]| -> Vec<Duration> {
            v.iter().map(|&ms| Duration::from_millis(ms)).collect()
        };
        assert_eq!(percentiles(&t(&[5])), (5.0, 5.0, 5.0));
        assert_eq!(percentiles(&t(&[4, 1, 3, 2])), (2.5, 4.0, 1.0));
        let ten: Vec<u64> = (1..=10).rev().collect();
        assert_eq!(percentiles(&t(&ten)), (5.5, 9.0, 1.0));
    }
}
