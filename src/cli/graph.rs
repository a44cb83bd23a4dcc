//! `bbc graph`: the elaborated graph as Graphviz DOT.

use super::{print, refuse_overwriting, spec_files, write_text, CliResult, SpecArgs};
use bbc::compiler::ir::to_dot;
use clap::Args;
use std::path::PathBuf;

/// Print the model's dataflow graph in Graphviz DOT.
///
/// One box per op (name, op, output shape, and the parameters it consumes); inputs and outputs
/// are ellipses. Render with e.g. `bbc graph spec.bb | dot -Tsvg -o model.svg`.
#[derive(Args, Debug)]
pub struct GraphArgs {
    #[command(flatten)]
    pub spec: SpecArgs,

    /// Write the DOT text to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn main(args: &GraphArgs) -> CliResult {
    let (program, model) = args.spec.build()?;
    if let Some(path) = &args.output {
        refuse_overwriting(path, &spec_files(&program))?;
    }
    let dot = to_dot(&model.graph);
    match &args.output {
        Some(path) => write_text(path, &dot),
        None => print(&dot),
    }
}
