//! `bbc ir`: print the elaborated Graph IR in its text form.

use super::{
    print, refuse_overwriting, spec_files, write_text, CliError, CliResult, OptArgs, SpecArgs,
};
use bbc::compiler::ir::print_text;
use bbc::compiler::passes;
use clap::Args;
use std::path::PathBuf;

/// Print the elaborated Graph IR in its text form.
///
/// One value per line in topological order: inputs, parameters with their initialisation, and
/// op applications with attributes, result type and source location (`@ file:line:col`, then
/// `< file:line:col` for each enclosing block call).
#[derive(Args, Debug)]
pub struct IrArgs {
    #[command(flatten)]
    pub spec: SpecArgs,

    #[command(flatten)]
    pub opt: OptArgs,

    /// Print the IR after this pass (by name) instead of at the end; repeatable.
    #[arg(long = "after", value_name = "PASS")]
    pub after: Vec<String>,

    /// Print the IR after every pass that runs.
    #[arg(long)]
    pub print_after_all: bool,

    /// Report each pass's run time (and whether it changed the graph) on stderr.
    #[arg(long)]
    pub time_passes: bool,

    /// Instead of the IR, say where a fusion almost applied and why it did not.
    #[arg(long, conflicts_with_all = ["after", "print_after_all"])]
    pub explain: bool,

    /// List the available passes and exit.
    #[arg(long)]
    pub list_passes: bool,

    /// Write the IR to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn main(args: &IrArgs) -> CliResult {
    if args.list_passes {
        let lines: Vec<String> = passes::all()
            .iter()
            .map(|p| format!("{:<20} {}", p.name(), p.description()))
            .collect();
        return print(&(lines.join("\n") + "\n"));
    }
    let pipeline = args.opt.pipeline()?;
    for name in &args.after {
        if !pipeline.iter().any(|p| p.name() == name) {
            return Err(CliError::msg(format!(
                "--after {name}: that pass is not in the pipeline"
            )));
        }
    }
    let (program, mut model) = args.spec.build()?;
    if let Some(path) = &args.output {
        refuse_overwriting(path, &spec_files(&program))?;
    }
    let opts = passes::Options {
        print_after: args.after.clone(),
        print_after_all: args.print_after_all,
        time_passes: args.time_passes,
        explain: args.explain,
    };
    let runs = passes::run(&mut model.graph, &pipeline, &opts)
        .map_err(|e| CliError::msg(e.to_string()))?;
    if args.time_passes {
        for r in &runs {
            let mark = if r.changed { "changed" } else { "unchanged" };
            super::note!(
                "{:<20} {:>9.3} ms  {mark}",
                r.name,
                r.time.as_secs_f64() * 1e3
            );
        }
    }
    let text = if args.explain {
        explanation(args, &runs)
    } else {
        printed_ir(&model.graph, &runs)
    };
    match &args.output {
        Some(path) => write_text(path, &text),
        None => print(&text),
    }
}

/// What `--explain` prints: each pass's near misses, or why there are none.
fn explanation(args: &IrArgs, runs: &[passes::PassRun]) -> String {
    let mut lines: Vec<String> = runs
        .iter()
        .flat_map(|r| r.explained.iter().cloned())
        .collect();
    // Without a fusion pass nothing was looked for: "every fusion fired" would mislead.
    if !runs.iter().any(|r| r.name.starts_with("fuse-")) {
        let level = args.opt.level.unwrap_or(0);
        let (why, hint) = if args.opt.passes.is_some() {
            (
                "--passes names no fusion pass (fuse-*)".to_string(),
                "name one",
            )
        } else if passes::pipeline(level)
            .iter()
            .any(|p| p.name().starts_with("fuse-"))
        {
            (
                "--skip-pass leaves out every fusion pass".to_string(),
                "skip fewer",
            )
        } else {
            (
                format!("the -O{level} pipeline runs no fusion passes"),
                "-O2 runs them all",
            )
        };
        lines.push(format!("{why}, so no fusion was looked for ({hint})"));
    } else if lines.is_empty() {
        lines.push(
            "every fusion the pipeline looks for either fired or had nothing to fuse".to_string(),
        );
    }
    lines.join("\n") + "\n"
}

/// The IR at the end of the pipeline, or after the passes `--after` or `--print-after-all`
/// name.
fn printed_ir(graph: &bbc::compiler::ir::Graph, runs: &[passes::PassRun]) -> String {
    let printed: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            r.printed
                .as_ref()
                .map(|t| format!("// after {}\n{t}", r.name))
        })
        .collect();
    if printed.is_empty() {
        print_text(graph)
    } else {
        printed.join("\n")
    }
}
