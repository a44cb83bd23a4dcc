//! `bbc check`: elaborate a model (or every model) and report diagnostics only.

use super::{elaborate, load, print, thousands, CliError, CliResult, SpecArgs};
use bbc::compiler::elab::Elaborated;
use bbc::compiler::ops::ParamKind;
use bbc::compiler::weights::param_table;
use clap::Args;

/// Check that a spec elaborates: names resolve, types and shapes check, asserts hold.
///
/// Prints `ok: <model> (<n> values, <k> parameter tensors, <p> parameters)` per model, or the
/// diagnostics and exits with 1.
#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub spec: SpecArgs,

    /// Check every model and variant in the file and report all failures.
    #[arg(long, conflicts_with = "model")]
    pub all_models: bool,
}

fn summary(m: &Elaborated) -> String {
    let table = param_table(&m.graph);
    let params: u64 = table
        .iter()
        .filter(|p| p.kind == ParamKind::Param)
        .map(|p| p.numel() as u64)
        .sum();
    format!(
        "ok: {} ({} values, {} parameter tensors, {} parameters)\n",
        m.model,
        thousands(m.graph.nodes.node_count() as u64),
        table.len(),
        thousands(params)
    )
}

pub fn main(args: &CheckArgs) -> CliResult {
    let program = load(&args.spec.spec)?;
    // A file without models falls through to the elaborator's diagnostic.
    if !args.all_models || program.models().is_empty() {
        let m = elaborate(&program, args.spec.model.as_deref(), &args.spec)?;
        return print(&summary(&m));
    }
    let models = program.models();
    let mut failed = Vec::new();
    for name in &models {
        match elaborate(&program, Some(name), &args.spec) {
            Ok(m) => print(&summary(&m))?,
            Err(CliError(text)) => {
                print(&format!("FAILED: {name}\n"))?;
                super::to_stderr(&text);
                failed.push(name.as_str());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::msg(format!(
            "{} of {} models failed: {}",
            failed.len(),
            models.len(),
            failed.join(", ")
        )))
    }
}
