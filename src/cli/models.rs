//! `bbc models`: list the models and variants a spec defines.

use super::{load, print, CliError, CliResult};
use clap::Args;
use std::path::PathBuf;

/// List the models and variants a spec defines.
///
/// One per line, in source order; the one built when `--model` is not given (the last) is
/// marked `(default)`.
#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// The `.bb` spec file.
    #[arg(value_name = "SPEC")]
    pub spec: PathBuf,
}

pub fn main(args: &ModelsArgs) -> CliResult {
    let program = load(&args.spec)?;
    // A spec that defines a name twice lists no models: `check` would refuse every one.
    program
        .resolve()
        .map_err(|d| CliError::diags(&d, Some(&program.sources)))?;
    let models = program.models();
    if models.is_empty() {
        super::note!("note: `{}` defines no model", args.spec.display());
    }
    let mut out = String::new();
    for (i, name) in models.iter().enumerate() {
        out.push_str(name);
        if i + 1 == models.len() {
            out.push_str("  (default)");
        }
        out.push('\n');
    }
    print(&out)
}
