//! `bbc weights`: the model's state_dict keys, checking a checkpoint against them, and saving
//! seeded default-initialised weights.

use super::{print, shape, table, thousands, CliError, CliResult, SpecArgs};
use bbc::compiler::ops::ParamKind;
use bbc::compiler::weights::{init_weights, load_file, param_table, value_warnings};
use clap::Args;
use std::path::PathBuf;

/// List the state_dict keys the model expects, check a checkpoint, or write initial weights.
///
/// Without `--against`, prints every key with its shape, kind (param or buffer) and the
/// `file:line:col` that declares it, then the totals. With `--against`, checks the checkpoint
/// (keys after the model's `rename`/`ignore` rules, shapes, dtypes), reports every mismatch
/// at the spec line that declares the key, then reads the values and warns about NaN or
/// infinite ones and negative BatchNorm variances.
#[derive(Args, Debug)]
pub struct WeightsArgs {
    #[command(flatten)]
    pub spec: SpecArgs,

    /// Check this safetensors checkpoint against the model instead of listing the keys.
    #[arg(long, value_name = "CKPT")]
    pub against: Option<PathBuf>,

    /// Write weights initialised with PyTorch's defaults (seeded by --seed) to this
    /// safetensors file.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,

    /// Seed for --save.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "save")]
    pub seed: u64,
}

pub fn main(args: &WeightsArgs) -> CliResult {
    if let Some(path) = &args.save {
        bbc::runtime::check_writable(path).map_err(CliError::msg)?;
    }
    let (program, model) = args.spec.build()?;
    if let Some(path) = &args.save {
        let mut reads = super::spec_files(&program);
        reads.extend(
            args.against
                .iter()
                .map(|ckpt| ("the checkpoint --against".to_string(), ckpt.clone())),
        );
        super::refuse_overwriting(path, &reads)?;
    }
    let entries = param_table(&model.graph);
    match &args.against {
        Some(ckpt) => {
            let weights =
                load_file(&model, ckpt).map_err(|d| CliError::diags(&d, Some(&program.sources)))?;
            for warning in value_warnings(&weights) {
                super::note!("warning: {warning}");
            }
            print(&format!(
                "ok: {} matches {} ({} keys)\n",
                ckpt.display(),
                model.model,
                entries.len()
            ))?;
        }
        None => {
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|p| {
                    let kind = match p.kind {
                        ParamKind::Param => "param",
                        ParamKind::Buffer => "buffer",
                    };
                    let at = model
                        .params
                        .get(&p.key)
                        .map(|site| program.sources.location(site.span).to_string())
                        .unwrap_or_default();
                    vec![p.key.clone(), shape(&p.shape), kind.to_string(), at]
                })
                .collect();
            let (mut params, mut buffers) = (0u64, 0u64);
            for p in &entries {
                match p.kind {
                    ParamKind::Param => params += p.numel() as u64,
                    ParamKind::Buffer => buffers += p.numel() as u64,
                }
            }
            let mut out = table(
                &["key", "shape", "kind", "declared at"],
                &rows,
                &[false, false, false, false],
            );
            out.push_str(&format!(
                "{} keys, {} parameters, {} buffer elements\n",
                entries.len(),
                thousands(params),
                thousands(buffers)
            ));
            print(&out)?;
        }
    }
    if let Some(path) = &args.save {
        super::check_memory(&model.graph)?;
        let weights = init_weights(&model.graph, args.seed);
        let tensors: Vec<(String, &bbc::runtime::Tensor)> =
            weights.iter().map(|(k, t)| (k.clone(), t)).collect();
        bbc::runtime::save(path, &tensors).map_err(|e| super::write_failed(path, e))?;
        super::note!(
            "wrote {} tensors to {} (seed {})",
            tensors.len(),
            path.display(),
            args.seed
        );
    }
    Ok(())
}
