//! `bbc run`: run a model with the reference interpreter on `.npy`, `.png` or seeded random
//! inputs, summarise its outputs, and optionally write them as `.npy` or `.png`.
//!
//! A `.png` input is read as a `[1, C, H, W]` tensor in [0, 1] (C = 3 for colour, 1 for
//! grey; alpha dropped) and must match the model's input shape (a rank-3 `[C, H, W]` input
//! takes the image without its batch axis). A `.png` output is written from a `[1, C, H, W]`
//! or `[C, H, W]` output with C = 1 or 3, clamped to [0, 1] and rounded to 8 bits.

use super::{print, shape, CliError, CliResult, OptArgs, SpecArgs};
use bbc::compiler::elab::Elaborated;
use bbc::compiler::{interp, weights};
use bbc::runtime::image::{is_png_path, png_layout};
use bbc::runtime::{read_npy, read_png, write_npy, write_png, Rng, Tensor};
use clap::Args;
use ndarray::IxDyn;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Run a model on inputs and print a summary of every output.
///
/// Weights come from --weights (checked against the spec first) or are initialised with
/// PyTorch's defaults from --seed; inputs come from .npy or .png files (a PNG is a
/// [1, C, H, W] image in [0, 1]) or are drawn from N(0, 1) with --seed. The engine is the reference interpreter, the oracle every future backend is checked
/// against: exact, not fast.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub spec: SpecArgs,

    #[command(flatten)]
    pub opt: OptArgs,

    /// A safetensors checkpoint to load [default: seeded PyTorch-default initialisation].
    #[arg(short, long, value_name = "W.safetensors")]
    pub weights: Option<PathBuf>,

    /// An input as NAME=FILE.npy, or FILE.npy when the model has one input; repeatable.
    /// A .png file is read as a [1, C, H, W] image in [0, 1] (C = 3 colour, 1 grey; alpha
    /// dropped). Inputs not given are drawn from N(0, 1) with --seed.
    #[arg(short, long = "input", value_name = "[NAME=]FILE.npy|.png")]
    pub inputs: Vec<String>,

    /// Write the output to this .npy file (models with one output); a .png file takes a
    /// [1, C, H, W] or [C, H, W] output with C = 1 or 3, clamped to [0, 1], 8 bits.
    #[arg(
        short,
        long,
        value_name = "FILE.npy|.png",
        conflicts_with = "output_dir"
    )]
    pub output: Option<PathBuf>,

    /// Write every output to DIR/<name>.npy (the folder is created if needed).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// Seed for initialised weights and random inputs.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,

    /// Use the reference interpreter (the only engine today; accepted so scripts keep working
    /// when compiled engines arrive).
    #[arg(long)]
    pub interp: bool,

    /// How many leading values of each output to print.
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub show: usize,
}

/// The model's inputs as `(name, shape)`, in declaration order.
fn model_inputs(model: &Elaborated) -> Vec<(String, Vec<usize>)> {
    let g = &model.graph;
    g.inputs
        .iter()
        .map(|&i| (g.node(i).name.clone(), g.node(i).shape.clone()))
        .collect()
}

/// Reads the `--input` files and draws the inputs that were not given.
fn inputs(args: &RunArgs, model: &Elaborated) -> Result<HashMap<String, Tensor>, CliError> {
    let declared = model_inputs(model);
    let names: Vec<&str> = declared.iter().map(|(n, _)| n.as_str()).collect();
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for arg in &args.inputs {
        let (name, path) = match arg.split_once('=') {
            Some((n, p)) if names.contains(&n) => (n.to_string(), PathBuf::from(p)),
            _ if declared.len() == 1 => (declared[0].0.clone(), PathBuf::from(arg)),
            Some((n, _)) => {
                return Err(CliError::msg(format!(
                    "model `{}` has no input `{n}` (inputs: {})",
                    model.model,
                    names.join(", ")
                )))
            }
            None => {
                return Err(CliError::msg(format!(
                    "model `{}` has {} inputs; name the one `{arg}` is for, as NAME={arg} \
                     (inputs: {})",
                    model.model,
                    names.len(),
                    names.join(", ")
                )))
            }
        };
        if files.insert(name.clone(), path).is_some() {
            return Err(CliError::msg(format!("input `{name}` is given twice")));
        }
    }
    let rng = Rng::new(args.seed).fork("input");
    let mut out = HashMap::new();
    for (name, expected) in declared {
        let t = match files.get(&name) {
            Some(path) if is_png_path(path) => png_input(&name, path, &expected, model)?,
            Some(path) => {
                let t = read_npy(path)
                    .map_err(|e| CliError::msg(format!("cannot read input `{name}`: {e}")))?;
                if t.shape() != expected.as_slice() {
                    return Err(CliError::msg(format!(
                        "input `{name}` from `{}` has shape {}, but model `{}` expects {}\n\
                         help: size parameters can be changed with --dim NAME=VALUE",
                        path.display(),
                        shape(t.shape()),
                        model.model,
                        shape(&expected)
                    )));
                }
                t
            }
            None => {
                super::note!(
                    "note: input `{name}` {} drawn from N(0, 1) with seed {}",
                    shape(&expected),
                    args.seed
                );
                rng.fork(&name).standard_normal_tensor(&expected)
            }
        };
        out.insert(name, t);
    }
    Ok(out)
}

/// Reads a `.png` input and fits it to the declared `[1, C, H, W]` (or `[C, H, W]`) shape.
fn png_input(
    name: &str,
    path: &Path,
    expected: &[usize],
    model: &Elaborated,
) -> Result<Tensor, CliError> {
    let t =
        read_png(path).map_err(|e| CliError::msg(format!("cannot read input `{name}`: {e}")))?;
    let [_, c, h, w] = t.shape() else {
        unreachable!("read_png gives [1, C, H, W]")
    };
    let (c, h, w) = (*c, *h, *w);
    let t = match expected.len() {
        3 => t
            .into_shape_with_order(IxDyn(&[c, h, w]))
            .expect("same elements"),
        _ => t,
    };
    if t.shape() == expected {
        return Ok(t);
    }
    let colour = |c: usize| match c {
        1 => "grey".to_string(),
        3 => "RGB".to_string(),
        n => format!("{n}-channel"),
    };
    let wanted = match expected {
        [1, ec, eh, ew] | [ec, eh, ew] => Some((*ec, *eh, *ew)),
        _ => None,
    };
    let help = match wanted {
        None => format!(
            "help: a PNG is read as [1, C, H, W]; input `{name}` is not an image of that form"
        ),
        Some((ec, _, _)) if ec != c => format!(
            "help: the model takes {} images ({ec} channels); convert the PNG to {}",
            colour(ec),
            colour(ec)
        ),
        Some(_) => format!(
            "help: build the model for this image size with --dim H={h} --dim W={w} \
             (the names of the spec's image-size parameters)"
        ),
    };
    Err(CliError::msg(format!(
        "input `{name}` from `{}` has {h}x{w} {} pixels (shape {}), but model `{}` expects {}\n{help}",
        path.display(),
        colour(c),
        shape(&[1, c, h, w]),
        model.model,
        shape(expected)
    )))
}

/// min, max, mean and (population) standard deviation; NaN-free data assumed for min/max.
fn summary(t: &Tensor) -> String {
    let n = t.len();
    if n == 0 {
        return "empty".to_string();
    }
    let (mut lo, mut hi, mut sum) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &v in t.iter() {
        let v = f64::from(v);
        lo = lo.min(v);
        hi = hi.max(v);
        sum += v;
    }
    let mean = sum / n as f64;
    let var = t
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n as f64;
    format!(
        "min {lo:.6}  max {hi:.6}  mean {mean:.6}  std {:.6}",
        var.sqrt()
    )
}

pub fn main(args: &RunArgs) -> CliResult {
    let (program, model) = args.spec.build()?;
    super::check_memory(&model.graph)?;
    // Check every destination before running, so nothing is computed for nothing.
    let outputs: Vec<&str> = model
        .graph
        .outputs
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    if args.output.is_some() && outputs.len() != 1 {
        return Err(CliError::msg(format!(
            "--output needs a model with one output; `{}` has {} ({}); use --output-dir",
            model.model,
            outputs.len(),
            outputs.join(", ")
        )));
    }
    if let Some(path) = args.output.as_ref().filter(|p| is_png_path(p)) {
        let out = &model.graph.outputs[0];
        let dims = &model.graph.node(out.value).shape;
        png_layout(dims).map_err(|e| {
            CliError::msg(format!(
                "cannot write output `{}` {} to `{}`: {e}\nhelp: write it as .npy instead",
                out.name,
                shape(dims),
                path.display()
            ))
        })?;
    }
    if let Some(path) = &args.output {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        if path.is_dir() || !dir.is_dir() {
            return Err(CliError::msg(format!(
                "cannot write `{}`: {}",
                path.display(),
                if path.is_dir() {
                    "it is a folder"
                } else {
                    "its folder does not exist"
                }
            )));
        }
    }
    if let Some(dir) = args
        .output_dir
        .as_ref()
        .filter(|d| d.exists() && !d.is_dir())
    {
        return Err(CliError::msg(format!(
            "--output-dir `{}` exists and is not a folder",
            dir.display()
        )));
    }
    let weights = match &args.weights {
        Some(path) => weights::load_file(&model, path)
            .map_err(|d| CliError::diags(&d, Some(&program.sources)))?,
        None => weights::init_weights(&model.graph, args.seed),
    };
    let inputs = inputs(args, &model)?;
    let mut graph = model.graph.clone();
    let pipeline = args.opt.pipeline()?;
    bbc::compiler::passes::run(&mut graph, &pipeline, &Default::default())
        .map_err(|e| CliError::msg(e.to_string()))?;
    let results = interp::run(&graph, &inputs, &weights).map_err(CliError::msg)?;

    let mut out = String::new();
    for name in &outputs {
        let Some(t) = results.get(*name) else {
            continue;
        };
        let _ = writeln!(out, "{name}: f32{}  {}", shape(t.shape()), summary(t));
        let first: Vec<String> = t
            .iter()
            .take(args.show)
            .map(|v| format!("{v:.6}"))
            .collect();
        let more = if t.len() > args.show { ", ..." } else { "" };
        let _ = writeln!(out, "  [{}{more}]", first.join(", "));
    }
    print(&out)?;

    if let Some(path) = &args.output {
        if let Some(t) = outputs.first().and_then(|n| results.get(*n)) {
            if is_png_path(path) {
                write_png(path, t).map_err(CliError::msg)?;
            } else {
                write_npy(path, t).map_err(CliError::msg)?;
            }
        }
    }
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::msg(format!("cannot create `{}`: {e}", dir.display())))?;
        for name in &outputs {
            if let Some(t) = results.get(*name) {
                write_npy(dir.join(format!("{name}.npy")), t).map_err(CliError::msg)?;
            }
        }
    }
    Ok(())
}
