//! The pass manager: named passes over the Graph IR, grouped into pipelines (`-O0`, `-O1`,
//! `-O2`), with the verifier run after every pass and optional printing and timing.
//!
//! Every pass preserves what the graph computes; `tests/optimize.rs` checks this on every
//! spec by running the interpreter before and after, and `tests/passes/` pins each pass's
//! rewrites with small text-IR cases.

mod assign_layout;
mod const_fold;
mod cse;
mod dce;
mod fold_batch_norm;
mod fold_channel_scale;
mod fold_haar_conv;
mod fold_output_scale;
mod fuse_attention;
mod fuse_dwconv_norm;
mod fuse_elementwise;
mod fuse_epilogue;
mod fuse_fff;
mod fusion;
mod pool_before_conv;
mod remove_identities;
mod scale_shift_batch_norm;
mod simplify_layout;

pub use fusion::input_dependent;

use crate::ir::{print_text, verify, Graph};
use std::time::{Duration, Instant};

/// A graph-to-graph rewrite that preserves the computed outputs.
pub trait Pass {
    /// The kebab-case name used on the command line (`--passes`, `--after`, `--skip-pass`).
    fn name(&self) -> &'static str;
    /// One line for `bbc ir --list-passes`.
    fn description(&self) -> &'static str;
    /// Rewrites `graph`; returns whether anything changed.
    fn run(&self, graph: &mut Graph) -> bool;
    /// For `bbc ir --explain`: where this pass's pattern almost matched `graph`, and why it
    /// did not fire, the way a compiler reports a missed vectorisation.
    fn explain(&self, _graph: &Graph) -> Vec<String> {
        Vec::new()
    }
}

/// Every pass, in the order `-O2` runs them.
pub fn all() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(remove_identities::RemoveIdentities),
        Box::new(const_fold::ConstFold),
        Box::new(simplify_layout::SimplifyLayout),
        Box::new(fold_batch_norm::FoldBatchNorm),
        Box::new(fold_output_scale::FoldOutputScale),
        Box::new(fold_channel_scale::FoldChannelScale),
        Box::new(pool_before_conv::PoolBeforeConv),
        Box::new(fold_haar_conv::FoldHaarConv),
        Box::new(cse::Cse),
        Box::new(dce::Dce),
        Box::new(assign_layout::AssignLayout),
        Box::new(fuse_attention::FuseAttention),
        Box::new(fuse_dwconv_norm::FuseDwconvNorm),
        Box::new(fuse_fff::FuseFff),
        Box::new(scale_shift_batch_norm::ScaleShiftBatchNorm),
        Box::new(fuse_epilogue::FuseEpilogue),
        Box::new(fuse_elementwise::FuseElementwise),
    ]
}

pub fn lookup(name: &str) -> Option<Box<dyn Pass>> {
    all().into_iter().find(|p| p.name() == name)
}

/// The passes `-O1` runs: cleanups that never form fusion groups.
const CLEANUP: &[&str] = &["remove-identities", "const-fold", "simplify", "cse", "dce"];

/// The passes of an optimisation level: 0 none, 1 cleanup, 2 everything.
pub fn pipeline(level: u8) -> Vec<Box<dyn Pass>> {
    match level {
        0 => Vec::new(),
        1 => all()
            .into_iter()
            .filter(|p| CLEANUP.contains(&p.name()))
            .collect(),
        _ => all(),
    }
}

/// What to report while running a pipeline.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Print the IR after these passes (by name).
    pub print_after: Vec<String>,
    pub print_after_all: bool,
    pub time_passes: bool,
    /// Ask each pass where its pattern almost matched (see [`Pass::explain`]).
    pub explain: bool,
}

/// One pass's run.
#[derive(Clone, Debug)]
pub struct PassRun {
    pub name: &'static str,
    pub changed: bool,
    pub time: Duration,
    /// The IR after the pass, when printing was asked for.
    pub printed: Option<String>,
    /// Missed opportunities in the graph the pass saw, when asked for.
    pub explained: Vec<String>,
}

/// A pass broke the graph: a bug in the pass, reported with the verifier's findings.
#[derive(Clone, Debug)]
pub struct PassError {
    pub pass: &'static str,
    pub problems: Vec<String>,
}

impl std::fmt::Display for PassError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "internal error: pass `{}` produced an invalid graph:\n  {}",
            self.pass,
            self.problems.join("\n  ")
        )
    }
}

impl std::error::Error for PassError {}

/// Runs `passes` in order over `graph`, verifying after each one.
pub fn run(
    graph: &mut Graph,
    passes: &[Box<dyn Pass>],
    opts: &Options,
) -> Result<Vec<PassRun>, PassError> {
    let mut runs = Vec::new();
    for pass in passes {
        let explained = if opts.explain {
            pass.explain(graph)
        } else {
            Vec::new()
        };
        let start = Instant::now();
        let changed = pass.run(graph);
        let time = start.elapsed();
        let problems = verify(graph);
        if !problems.is_empty() {
            return Err(PassError {
                pass: pass.name(),
                problems,
            });
        }
        let print = opts.print_after_all || opts.print_after.iter().any(|n| n == pass.name());
        runs.push(PassRun {
            name: pass.name(),
            changed,
            time,
            printed: print.then(|| print_text(graph)),
            explained,
        });
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_kebab_case_and_levels_nest() {
        let names: Vec<&str> = all().iter().map(|p| p.name()).collect();
        for n in &names {
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{n}");
            assert_eq!(names.iter().filter(|m| *m == n).count(), 1, "{n} twice");
        }
        assert!(pipeline(0).is_empty());
        assert_eq!(
            pipeline(1).len(),
            CLEANUP.len(),
            "an -O1 pass name is misspelt"
        );
        assert!(pipeline(1).len() < pipeline(2).len());
        assert!(lookup("dce").is_some() && lookup("nope").is_none());
    }
}
