//! `bbc ir`: print the elaborated Graph IR in its text form.

use super::{print, write_text, CliResult, SpecArgs};
use bbc::compiler::ir::print_text;
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

    /// Write the IR to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn main(args: &IrArgs) -> CliResult {
    let (_, model) = args.spec.build()?;
    let text = print_text(&model.graph);
    match &args.output {
        Some(path) => write_text(path, &text),
        None => print(&text),
    }
}
