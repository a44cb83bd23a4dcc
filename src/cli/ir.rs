//! `bbc ir`: print the elaborated Graph IR in its text form.

use super::{print, write_text, CliError, CliResult, OptArgs, SpecArgs};
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
    #[arg(long)]
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
    let (_, mut model) = args.spec.build()?;
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
    if args.explain {
        let notes: Vec<String> = runs
            .iter()
            .flat_map(|r| r.explained.iter().cloned())
            .collect();
        let text = if notes.is_empty() {
            "every fusion the pipeline looks for either fired or had nothing to fuse\n".to_string()
        } else {
            notes.join("\n") + "\n"
        };
        return print(&text);
    }
    let printed: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            r.printed
                .as_ref()
                .map(|t| format!("// after {}\n{t}", r.name))
        })
        .collect();
    let text = if printed.is_empty() {
        print_text(&model.graph)
    } else {
        printed.join("\n")
    };
    match &args.output {
        Some(path) => write_text(path, &text),
        None => print(&text),
    }
}
