//! `bbc stats`: a torchinfo-style table of parameters, FLOPs and activation memory.
//!
//! The numbers come from `bbc::compiler::stats`, whose module docs define them; this file only
//! lays them out.

use super::{print, shape, table, thousands, CliError, CliResult, SpecArgs};
use bbc::compiler::codegen::cpu::plan;
use bbc::compiler::stats::{stats, Group};
use clap::Args;

/// Per-layer parameters, FLOPs and activation memory, like torchinfo.
///
/// One row per op (or per name prefix with --depth), in execution order. FLOPs count a
/// multiply-add as 2. Activations are f32 op outputs; parameters are counted at their first
/// consumer. The peak is the largest set of op outputs alive at once when running in
/// topological order, freeing each value after its last use; graph inputs and weights are not
/// part of it and are reported separately. With --arena, the CPU executable's planned arena
/// (values placed by liveness) and the size of its packed weights are reported too.
#[derive(Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    pub spec: SpecArgs,

    #[command(flatten)]
    pub opt: super::OptArgs,

    /// Aggregate layers by the first N segments of their path (`stages.0.blocks.1.conv_dw` at
    /// depth 2 is `stages.0`) [default: one row per op].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub depth: Option<u32>,

    /// Also compile the graph for this CPU (seeded weights; the plan does not depend on their
    /// values) and report the executable's planned activation arena, its lower bound (the
    /// most bytes live at once), kernel scratch, the weights as its kernels pack them and
    /// steps per inference.
    #[arg(long)]
    pub arena: bool,
}

/// `1234567` FLOPs as `1.23 MFLOPs`.
pub fn flops(n: u64) -> String {
    let v = n as f64;
    if v >= 1e9 {
        format!("{:.2} GFLOPs", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} MFLOPs", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2} KFLOPs", v / 1e3)
    } else {
        format!("{n} FLOPs")
    }
}

/// Bytes in binary units.
pub fn bytes(n: u64) -> String {
    let v = n as f64;
    if v >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", v / (1u64 << 30) as f64)
    } else if v >= (1u64 << 20) as f64 {
        format!("{:.2} MiB", v / (1u64 << 20) as f64)
    } else if v >= 1024.0 {
        format!("{:.2} KiB", v / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn count(n: u64) -> String {
    if n == 0 {
        "--".to_string()
    } else {
        thousands(n)
    }
}

fn row(g: &Group) -> Vec<String> {
    let op = match (&g.op, g.ops) {
        (Some(op), 1) => op.clone(),
        (_, n) => format!("{n} ops"),
    };
    let params = if g.buffers > 0 {
        format!("{} (+{} buf)", count(g.params), thousands(g.buffers))
    } else {
        count(g.params)
    };
    vec![
        g.name.clone(),
        op,
        shape(&g.shape),
        params,
        flops(g.flops),
        bytes(g.activation_bytes),
    ]
}

pub fn main(args: &StatsArgs) -> CliResult {
    let (_, mut model) = args.spec.build()?;
    let before = stats(&model.graph);
    let pipeline = args.opt.pipeline()?;
    bbc::compiler::passes::run(&mut model.graph, &pipeline, &Default::default())
        .map_err(|e| CliError::msg(e.to_string()))?;
    let s = stats(&model.graph);
    let groups = match args.depth {
        Some(d) => s.grouped(d as usize),
        None => s.grouped(usize::MAX),
    };
    let rows: Vec<Vec<String>> = groups.iter().map(row).collect();
    let mut out = format!("model {}\n", model.model);
    out.push_str(&table(
        &[
            "layer",
            "op",
            "output shape",
            "params",
            "FLOPs",
            "activations",
        ],
        &rows,
        &[false, false, false, true, true, true],
    ));
    let peak_at = s
        .peak_at
        .as_deref()
        .map(|n| format!(" (at `{n}`)"))
        .unwrap_or_default();
    out.push_str(&format!(
        "\nparameters:          {} ({})\n\
         buffers:             {} elements ({})\n\
         FLOPs:               {}\n\
         inputs:              {}\n\
         activations (total): {}\n\
         activations (peak):  {}{peak_at}\n\
         kernels:             {}{}\n\
         intermediates:       {}{}\n",
        thousands(s.params),
        bytes(s.params * 4),
        thousands(s.buffers),
        bytes(s.buffers * 4),
        flops(s.flops),
        bytes(s.input_bytes),
        bytes(s.activation_bytes),
        bytes(s.peak_bytes),
        s.kernels,
        if pipeline.is_empty() {
            String::new()
        } else {
            format!(" ({} before optimisation)", before.kernels)
        },
        bytes(s.intermediate_bytes),
        if pipeline.is_empty() {
            String::new()
        } else {
            format!(" ({} before)", bytes(before.intermediate_bytes))
        },
    ));
    if args.arena {
        out.push_str(&arena_report(&model.graph)?);
    }
    print(&out)
}

/// The CPU executable's memory plan, as `bbc run` would build it.
fn arena_report(graph: &bbc::compiler::ir::Graph) -> Result<String, CliError> {
    let weights = bbc::compiler::weights::init_weights(graph, 0);
    let exe =
        plan::compile(graph, &weights, &plan::ExecOptions::default()).map_err(CliError::msg)?;
    let e = exe.stats();
    Ok(format!(
        "arena (planned):     {} (lower bound {})\n\
         scratch:             {}\n\
         weights packed:      {}\n\
         steps:               {} ({} fallbacks)\n",
        bytes(e.arena_bytes as u64),
        bytes(e.arena_lower_bound as u64),
        bytes(e.scratch_bytes as u64),
        bytes(e.packed_weight_bytes as u64),
        e.steps(),
        e.fallbacks.len(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(flops(12), "12 FLOPs");
        assert_eq!(flops(4_470_000_000), "4.47 GFLOPs");
        assert_eq!(flops(1_500_000), "1.50 MFLOPs");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.00 MiB");
    }
}
