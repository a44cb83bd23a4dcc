//! `bbc compile`: compile a model ahead of time for a GPU target and write the program to a
//! folder (`plan.json`, `kernels/`, `weights.safetensors`, `README.txt`) that any program
//! linking only `bbc-runtime` can load (`bbc_runtime::gpu::load_dir`) and run. No device is
//! needed to compile.

use super::run::{load_weights, optimize, Target};
use super::{shape, CliError, CliResult, OptArgs, SpecArgs};
use bbc::compiler::codegen::gpu::{self, GpuOptions};
use bbc::runtime::gpu::{save_dir, LaunchPlan};
use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Compile a model ahead of time for a GPU and write it to a folder.
///
/// --target gpu writes WGSL compute shaders (run on Vulkan through wgpu), --target cuda
/// writes CUDA C (compiled by NVRTC when loaded). DIR receives plan.json (buffers, kernels,
/// launches with their bindings and grid sizes), kernels/<name>.wgsl|.cu, the constants as
/// weights.safetensors and a README.txt; it is built beside DIR and renamed into place, so
/// a failure leaves nothing half-written. The graph is optimised at -O2 unless -O is given.
#[derive(Args, Debug)]
pub struct CompileArgs {
    #[command(flatten)]
    pub spec: SpecArgs,

    #[command(flatten)]
    pub opt: OptArgs,

    /// The compilation target.
    #[arg(long, value_enum)]
    pub target: Target,

    /// The folder to write (must not exist, or be empty; see --force).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,

    /// Replace DIR if it already holds a compiled program.
    #[arg(long)]
    pub force: bool,

    /// A safetensors checkpoint to compile in [default: seeded PyTorch-default
    /// initialisation].
    #[arg(short, long, value_name = "W.safetensors")]
    pub weights: Option<PathBuf>,

    /// Seed for initialised weights.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,

    /// CUDA only: run matrix products on tensor cores (TF32) where their sizes allow.
    #[arg(long)]
    pub tensor_cores: bool,
}

pub fn main(args: &CompileArgs) -> CliResult {
    let Some(dialect) = args.target.dialect() else {
        return Err(CliError::msg(
            "the cpu target has no ahead-of-time output yet (it is JIT-compiled by `bbc run`); \
             use --target gpu or --target cuda",
        ));
    };
    if args.tensor_cores && args.target != Target::Cuda {
        return Err(CliError::msg(
            "--tensor-cores applies to --target cuda only",
        ));
    }
    let (program, model) = args.spec.build()?;
    let weights = load_weights(&program, &model, args.weights.as_deref(), args.seed)?;
    let graph = optimize(&model.graph, &args.opt.pipeline_or(2)?)?;
    let opts = GpuOptions {
        tensor_cores: args.tensor_cores,
    };
    let (plan, constants) = gpu::plan::build(&graph, &weights, dialect, &opts).map_err(|e| {
        CliError::msg(format!(
            "cannot compile for --target {}: {e}",
            args.target.name()
        ))
    })?;
    let readme = readme(args, &model.model, &plan);
    save_dir(&args.output, &plan, &constants, &readme, args.force).map_err(CliError::msg)?;
    note!(
        "wrote `{}`: {} kernels, {} launches, arena {:.1} MiB",
        args.output.display(),
        plan.kernels.len(),
        plan.launches.len(),
        (plan.arena_len * 4) as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// The program folder's README: what it holds and how to run it.
fn readme(args: &CompileArgs, model: &str, plan: &LaunchPlan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Model `{model}` from {}, compiled by bbc {} for --target {}.\n",
        args.spec.spec.display(),
        env!("CARGO_PKG_VERSION"),
        args.target.name()
    );
    let _ = writeln!(out, "Inputs (f32, row-major):");
    for io in &plan.inputs {
        let _ = writeln!(out, "  {} {}", io.name, shape(&io.shape));
    }
    let _ = writeln!(out, "Outputs (f32, row-major):");
    for io in &plan.outputs {
        let _ = writeln!(out, "  {} {}", io.name, shape(&io.shape));
    }
    let ext = plan.dialect.extension();
    let _ = write!(
        out,
        "\nFiles:\n  plan.json            buffers (arena slices or constants), kernels, launches\n                       \
         (kernel, buffer per binding, grid), inputs and outputs\n  kernels/<name>.{ext:<5} \
         the kernel sources (`source` is empty in plan.json)\n  weights.safetensors  the \
         constants, by the keys plan.json names\n\n\
         Run it from Rust with only the bbc-runtime crate:\n\n    \
         let (plan, constants) = bbc_runtime::gpu::load_dir(Path::new(\"DIR\"))?;\n    \
         let mut exe = bbc_runtime::gpu::open(plan, &constants)?;\n    \
         let outputs = exe.run(&inputs)?; // HashMap<String, Tensor> in, BTreeMap out\n"
    );
    let _ = write!(
        out,
        "\n{}\n",
        match args.target {
            Target::Cuda => "It needs an NVIDIA GPU with its driver and NVRTC (libnvrtc.so).",
            _ => "It needs a Vulkan device (set BBC_GPU_ADAPTER to pick one by name).",
        }
    );
    out
}
