//! `bbc run`: run a model on `.npy`, `.png` or seeded random inputs, summarise its outputs,
//! and optionally write them as `.npy` or `.png`. The default engine compiles the optimised
//! graph for this CPU (`--target cpu`); `--target gpu` runs WGSL kernels on a Vulkan device
//! through wgpu, `--target cuda` CUDA kernels on an NVIDIA GPU; `--interp` runs the
//! reference interpreter instead.
//!
//! A `.png` input is read as a `[1, C, H, W]` tensor in [0, 1] (C = 3 for colour, 1 for
//! grey; alpha dropped) and must match the model's input shape (a rank-3 `[C, H, W]` input
//! takes the image without its batch axis). A `.png` output is written from a `[1, C, H, W]`
//! or `[C, H, W]` output with C = 1 or 3, clamped to [0, 1] and rounded to 8 bits.

use super::{print, shape, write_failed, CliError, CliResult, OptArgs, SpecArgs};
use bbc::compiler::codegen::cpu::plan::ExecStats;
use bbc::compiler::elab::{Elaborated, Program};
use bbc::compiler::ir::Graph;
use bbc::runtime::gpu::Dialect;
use bbc::runtime::image::{is_png_path, png_layout};
use bbc::runtime::{read_npy, read_png, write_npy, write_png, Tensor};
use bbc::{CompileOptions, Model, Summary};
use clap::Args;
use ndarray::IxDyn;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Run a model on inputs and print a summary of every output.
///
/// Weights come from --weights (checked against the spec first) or are initialised with
/// PyTorch's defaults from --seed; inputs come from .npy or .png files (a PNG is a
/// [1, C, H, W] image in [0, 1]) or are drawn from N(0, 1) with --seed. By default the graph
/// is optimised (-O2), compiled to native code for this CPU and run on a thread pool; nodes
/// without a planned kernel run as host code and are listed on stderr.
/// --target gpu runs it on a Vulkan device (WGSL through wgpu; BBC_GPU_ADAPTER picks an
/// adapter by name), --target cuda on an NVIDIA GPU (CUDA C compiled by NVRTC). --interp
/// runs the reference interpreter instead, the oracle every backend is checked against:
/// exact, not fast.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub spec: SpecArgs,

    #[command(flatten)]
    pub opt: OptArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub data: DataArgs,

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

    /// How many leading values of each output to print (0: only the summary line).
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub show: usize,
}

/// Weights by state_dict key.
pub type Weights = BTreeMap<String, Tensor>;
/// Inputs by name.
pub type Inputs = HashMap<String, Tensor>;

/// The weights and inputs `run` and `bench` feed a model.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// A safetensors checkpoint to load [default: seeded PyTorch-default initialisation].
    #[arg(short, long, value_name = "W.safetensors")]
    pub weights: Option<PathBuf>,

    /// An input as NAME=FILE.npy, or FILE.npy when the model has one input; repeatable.
    /// A .png file is read as a [1, C, H, W] image in [0, 1] (C = 3 colour, 1 grey; alpha
    /// dropped). Inputs not given are drawn from N(0, 1) with --seed.
    #[arg(short, long = "input", value_name = "[NAME=]FILE.npy|.png")]
    pub inputs: Vec<String>,

    /// Seed for initialised weights and random inputs [default: 0].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

impl DataArgs {
    /// The model's weights (checked against the spec) and its inputs by name.
    pub fn load(
        &self,
        program: &Program,
        model: &Elaborated,
    ) -> Result<(Weights, Inputs), CliError> {
        let files = input_files(&self.inputs, model)?;
        if let (Some(seed), Some(_)) = (self.seed, &self.weights) {
            if files.len() == model.graph.inputs.len() {
                return Err(CliError::msg(format!(
                    "--seed {seed} is not used: the weights come from --weights and every \
                     input from --input\nhelp: leave out --seed"
                )));
            }
        }
        let seed = self.seed.unwrap_or(0);
        let weights = load_weights(program, model, self.weights.as_deref(), seed)?;
        Ok((weights, inputs(&files, seed, model)?))
    }

    /// The files this command reads, each with what it is: the checkpoint and the inputs.
    pub fn files(&self, model: &Elaborated) -> Result<Vec<(String, PathBuf)>, CliError> {
        let weights = self
            .weights
            .iter()
            .map(|path| ("the checkpoint --weights".to_string(), path.clone()));
        let inputs = input_files(&self.inputs, model)?
            .into_iter()
            .map(|(name, path)| (format!("input `{name}`"), path));
        Ok(weights.chain(inputs).collect())
    }
}

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Native code for this CPU (Cranelift JIT and tuned GEMM/convolution kernels).
    Cpu,
    /// WGSL compute shaders on a Vulkan device through wgpu (any GPU, or Mesa's lavapipe).
    Gpu,
    /// CUDA C compiled at run time by NVRTC, on an NVIDIA GPU.
    Cuda,
}

impl Target {
    /// The library's target of this name.
    pub fn to_lib(self) -> bbc::Target {
        match self {
            Target::Cpu => bbc::Target::Cpu,
            Target::Gpu => bbc::Target::Gpu,
            Target::Cuda => bbc::Target::Cuda,
        }
    }

    /// The kernel language of a GPU target; `None` for the CPU.
    pub fn dialect(self) -> Option<Dialect> {
        self.to_lib().dialect()
    }

    /// The name `--target` takes.
    pub fn name(self) -> &'static str {
        self.to_lib().name()
    }
}

/// The engine options `run` and `bench` share.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// The compilation target.
    #[arg(long, value_enum, default_value_t = Target::Cpu)]
    pub target: Target,

    /// Use the reference interpreter instead of compiling (at -O0 unless -O is given).
    #[arg(long, conflicts_with_all = ["target", "threads"])]
    pub interp: bool,

    /// Threads of the cpu target, the calling thread included [default: all cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: Option<u64>,
}

impl EngineArgs {
    /// Rejects options that do not apply to the chosen target.
    pub fn check(&self) -> CliResult {
        if self.threads.is_some() && self.target.dialect().is_some() {
            return Err(CliError::msg(format!(
                "--threads is an option of the cpu target, not of --target {}",
                self.target.name()
            )));
        }
        Ok(())
    }

    /// The library's target: `--target`, or the interpreter with `--interp`.
    pub fn engine(&self) -> bbc::Target {
        match self.interp {
            true => bbc::Target::Interp,
            false => self.target.to_lib(),
        }
    }
}

/// The compile options of `run` and `bench`: the model and its sizes, the passes (`-O2`
/// unless a level is given; `-O0` with `--interp`), the target and its threads.
pub fn compile_options(
    spec: &SpecArgs,
    opt: &OptArgs,
    engine: &EngineArgs,
) -> Result<CompileOptions, CliError> {
    let opts = opt.apply(spec.options()?).target(engine.engine());
    Ok(match engine.threads {
        Some(n) => opts.threads(usize::try_from(n).unwrap_or(usize::MAX)),
        None => opts,
    })
}

/// Optimises and compiles `model` as `opts` say, and notes on stderr which nodes have no
/// kernel.
pub fn build(
    opts: &CompileOptions,
    model: &Elaborated,
    weights: &BTreeMap<String, Tensor>,
) -> Result<Model, CliError> {
    let compiled = opts.build(model, weights)?;
    if let Some(note) = compiled.exec_stats().and_then(fallback_note) {
        super::note!("{note}");
    }
    Ok(compiled)
}

/// The weights from `--weights` (checked against the spec) or seeded initialisation.
pub fn load_weights(
    program: &Program,
    model: &Elaborated,
    path: Option<&Path>,
    seed: u64,
) -> Result<BTreeMap<String, Tensor>, CliError> {
    let source = match path {
        Some(path) => bbc::Weights::File(path.to_path_buf()),
        None => bbc::Weights::Seeded(seed),
    };
    Ok(source.load(program, model)?.into_owned())
}

/// `graph` after the given passes.
pub fn optimize(
    graph: &Graph,
    pipeline: &[Box<dyn bbc::compiler::passes::Pass>],
) -> Result<Graph, CliError> {
    let mut graph = graph.clone();
    bbc::compiler::passes::run(&mut graph, pipeline, &Default::default())
        .map_err(|e| CliError::msg(e.to_string()))?;
    Ok(graph)
}

/// `note: N of M nodes have no planned kernel and run as host code: OP (n), ...`, if any (the
/// op table's reference, or a runtime routine on one thread; `bbc bench` says which and why).
pub fn fallback_note(stats: &ExecStats) -> Option<String> {
    if stats.fallbacks.is_empty() {
        return None;
    }
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &stats.fallbacks {
        *ops.entry(f.op.as_str()).or_default() += 1;
    }
    let list: Vec<String> = ops.iter().map(|(op, n)| format!("{op} ({n})")).collect();
    Some(format!(
        "note: {} of {} nodes have no planned kernel and run as host code: {}",
        stats.fallbacks.len(),
        stats.steps(),
        list.join(", ")
    ))
}

/// The named inputs in the order `model` takes them.
pub fn ordered<'a>(model: &Model, inputs: &'a Inputs) -> Result<Vec<&'a Tensor>, CliError> {
    model
        .inputs()
        .iter()
        .map(|i| {
            inputs
                .get(&i.name)
                .ok_or_else(|| CliError::msg(format!("no value given for input `{}`", i.name)))
        })
        .collect()
}

/// The model's inputs as `(name, shape)`, in declaration order.
fn model_inputs(model: &Elaborated) -> Vec<(String, Vec<usize>)> {
    let g = &model.graph;
    g.inputs
        .iter()
        .map(|&i| (g.node(i).name.clone(), g.node(i).shape.clone()))
        .collect()
}

/// The `--input` files (`[NAME=]FILE`) by input name, each name checked.
fn input_files(
    given: &[String],
    model: &Elaborated,
) -> Result<BTreeMap<String, PathBuf>, CliError> {
    let declared = model_inputs(model);
    let names: Vec<&str> = declared.iter().map(|(n, _)| n.as_str()).collect();
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for arg in given {
        let (name, path) = match arg.split_once('=') {
            Some((n, p)) if names.contains(&n) => (n.to_string(), PathBuf::from(p)),
            // A single input takes a bare path, or one that contains `=` and exists;
            // `NAME=FILE` with another name is a wrong name, not a missing file.
            _ if declared.len() == 1 && (!arg.contains('=') || Path::new(arg).exists()) => {
                (declared[0].0.clone(), PathBuf::from(arg))
            }
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
    for path in files.values() {
        known_format(path, "input")?;
    }
    Ok(files)
}

/// Reads the input `files` (by input name) and draws the inputs that were not given from
/// N(0, 1) with `seed`.
fn inputs(
    files: &BTreeMap<String, PathBuf>,
    seed: u64,
    model: &Elaborated,
) -> Result<HashMap<String, Tensor>, CliError> {
    let mut out = HashMap::new();
    for (name, expected) in model_inputs(model) {
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
                    seed
                );
                bbc::random_input(seed, &name, &expected)
            }
        };
        out.insert(name, t);
    }
    Ok(out)
}

/// Refuses a file whose extension is neither `.npy` nor `.png` (a file without one is read
/// or written as `.npy`): a `.jpg` input would otherwise fail as a malformed `.npy`, and a
/// `.txt` output silently hold `.npy` bytes.
fn known_format(path: &Path, what: &str) -> Result<(), CliError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        None | Some("npy") | Some("png") => Ok(()),
        Some(ext) => Err(CliError::msg(format!(
            "{what} `{}`: `.{ext}` is not a format bbc reads or writes\n\
             help: {what}s are .npy arrays (or .png images)",
            path.display()
        ))),
    }
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
        Some((ec, _, _)) if ec != c && matches!(ec, 1 | 3) => format!(
            "help: the model takes {} images ({ec} channels); convert the PNG to {}",
            colour(ec),
            colour(ec)
        ),
        // The reader gives grey or RGB (alpha dropped): no PNG has what this input takes.
        Some((ec, _, _)) if ec != c => format!(
            "help: a PNG is read as grey (1 channel) or RGB (3 channels, alpha dropped); \
             input `{name}` takes {ec} channels, so give it as a .npy array"
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

pub fn main(args: &RunArgs) -> CliResult {
    args.engine.check()?;
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
    if let Some(path) = &args.output {
        known_format(path, "output")?;
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
        bbc::runtime::check_writable(path).map_err(CliError::msg)?;
    }
    let mut reads = super::spec_files(&program);
    reads.extend(args.data.files(&model)?);
    if let Some(path) = &args.output {
        super::refuse_overwriting(path, &reads)?;
    }
    if let Some(dir) = &args.output_dir {
        for name in &outputs {
            super::refuse_overwriting(&dir.join(format!("{name}.npy")), &reads)?;
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
    // Every destination checked before anything is computed or written, so a bad one does
    // not leave the outputs before it written.
    if let Some(dir) = &args.output_dir {
        if let Some(taken) = outputs
            .iter()
            .map(|name| dir.join(format!("{name}.npy")))
            .find(|path| path.exists() && !path.is_file())
        {
            return Err(CliError::msg(format!(
                "--output-dir: `{}` exists and is not a file; nothing was written",
                taken.display()
            )));
        }
    }
    let (weights, inputs) = args.data.load(&program, &model)?;
    // Exact products on CUDA (no tensor cores): `run` is for checking outputs.
    let opts = compile_options(&args.spec, &args.opt, &args.engine)?;
    let compiled = build(&opts, &model, &weights)?;
    let views = ordered(&compiled, &inputs)?
        .into_iter()
        .map(|t| t.view())
        .collect::<Vec<_>>();
    let results: BTreeMap<String, Tensor> = compiled
        .outputs()
        .iter()
        .map(|o| o.name.clone())
        .zip(compiled.run(&views)?)
        .collect();

    let mut out = String::new();
    for name in &outputs {
        let Some(t) = results.get(*name) else {
            continue;
        };
        let summary = Summary::of(t).map_or_else(|| "empty".to_string(), |s| s.to_string());
        let _ = writeln!(out, "{name}: f32{}  {summary}", shape(t.shape()));
        // `--show 0`: the summary line alone.
        if args.show > 0 {
            let first: Vec<String> = t
                .iter()
                .take(args.show)
                .map(|v| format!("{v:.6}"))
                .collect();
            let more = if t.len() > args.show { ", ..." } else { "" };
            let _ = writeln!(out, "  [{}{more}]", first.join(", "));
        }
    }
    print(&out)?;

    if let Some(path) = &args.output {
        if let Some(t) = outputs.first().and_then(|n| results.get(*n)) {
            if is_png_path(path) {
                write_png(path, t).map_err(|e| write_failed(path, e))?;
            } else {
                write_npy(path, t).map_err(|e| write_failed(path, e))?;
            }
        }
    }
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::msg(format!("cannot create `{}`: {e}", dir.display())))?;
        for name in &outputs {
            if let Some(t) = results.get(*name) {
                let path = dir.join(format!("{name}.npy"));
                write_npy(&path, t).map_err(|e| write_failed(&path, e))?;
            }
        }
    }
    Ok(())
}
