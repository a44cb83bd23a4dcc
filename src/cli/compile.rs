//! `bbc compile`: compile a model ahead of time and write the program to a folder that a
//! program linking only the runtime can load and run. `--target cpu` writes an object file
//! of native code for this CPU (`model.o`), its C header, the runtime library's header and
//! the weights; `--target gpu|cuda` writes a launch plan, kernel sources and the weights
//! (`bbc_runtime::gpu::load_dir`). No device is needed to compile.

use super::run::{load_weights, optimize, Target};
use super::{shape, CliError, CliResult, OptArgs, SpecArgs};
use bbc::compiler::codegen::cpu::object::{self, ObjectProgram};
use bbc::compiler::codegen::gpu::{self, Dialect, GpuOptions};
use bbc::compiler::ir::Graph;
use bbc::runtime::aot::write_weights;
use bbc::runtime::gpu::{save_dir, LaunchPlan};
use bbc::runtime::program_dir::write_program_dir;
use bbc::runtime::Tensor;
use clap::Args;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The runtime library's C header, which `model.h` includes (`runtime/c/bbcrt.h`).
const BBCRT_HEADER: &str = include_str!("../../runtime/c/bbcrt.h");

/// Compile a model ahead of time and write it to a folder.
///
/// --target cpu writes native code for this CPU: DIR/model.o (the kernels, the plan and an
/// exported descriptor, `bbc_model_<name>` or --symbol), model.h (declares it and lists
/// the inputs and outputs), bbcrt.h (the runtime library's API), weights.bin (the prepared
/// weights, checked by size and digest when loaded) and a README.txt. A C program links
/// model.o with the runtime library (`cargo build -p bbc-rt --release` builds libbbcrt.a)
/// and nothing else; a Rust program with the bbc-runtime crate (`bbc_runtime::aot`).
/// --target gpu writes WGSL compute shaders (run on Vulkan through wgpu), --target cuda
/// CUDA C (compiled by NVRTC when loaded): DIR receives plan.json, kernels/, the constants
/// as weights.safetensors and a README.txt. DIR is built beside its destination and
/// renamed into place, so a failure leaves nothing half-written. The graph is optimised at
/// -O2 unless -O is given.
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
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        conflicts_with = "weights"
    )]
    pub seed: u64,

    /// CUDA only: run matrix products on tensor cores (TF32) where their sizes allow.
    #[arg(long)]
    pub tensor_cores: bool,

    /// CPU only: the C symbol of the model's descriptor [default: bbc_model_<model name>].
    #[arg(long, value_name = "NAME")]
    pub symbol: Option<String>,
}

pub fn main(args: &CompileArgs) -> CliResult {
    if args.tensor_cores && args.target != Target::Cuda {
        return Err(CliError::msg(
            "--tensor-cores applies to --target cuda only",
        ));
    }
    if let Some(symbol) = &args.symbol {
        if args.target != Target::Cpu {
            return Err(CliError::msg("--symbol applies to --target cpu only"));
        }
        // Before compiling: a symbol that cannot link is known from its name alone.
        object::check_symbol(symbol).map_err(|e| CliError::msg(format!("--symbol: {e}")))?;
    }
    // Before compiling: the folder the program goes into must exist.
    bbc::runtime::check_parent(&args.output).map_err(CliError::msg)?;
    let (program, model) = args.spec.build()?;
    let mut reads = super::spec_files(&program);
    reads.extend(
        args.weights
            .iter()
            .map(|path| ("the checkpoint --weights".to_string(), path.clone())),
    );
    super::refuse_replacing(&args.output, &reads)?;
    let weights = load_weights(&program, &model, args.weights.as_deref(), args.seed)?;
    let graph = optimize(&model.graph, &args.opt.pipeline_or(2)?)?;
    match args.target.dialect() {
        Some(dialect) => compile_gpu(args, &model.model, &graph, &weights, dialect),
        None => compile_cpu(args, &model.model, &graph, &weights),
    }
}

fn compile_gpu(
    args: &CompileArgs,
    model: &str,
    graph: &Graph,
    weights: &BTreeMap<String, Tensor>,
    dialect: Dialect,
) -> CliResult {
    let opts = GpuOptions {
        tensor_cores: args.tensor_cores,
    };
    let (plan, constants) = gpu::plan::build(graph, weights, dialect, &opts).map_err(|e| {
        CliError::msg(format!(
            "cannot compile for --target {}: {e}",
            args.target.name()
        ))
    })?;
    let readme = gpu_readme(args, model, &plan);
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

fn compile_cpu(
    args: &CompileArgs,
    model: &str,
    graph: &Graph,
    weights: &BTreeMap<String, Tensor>,
) -> CliResult {
    let symbol = args
        .symbol
        .clone()
        .unwrap_or_else(|| object::default_symbol(model));
    let program = object::compile_object(graph, weights, &symbol)
        .map_err(|e| CliError::msg(format!("cannot compile for --target cpu: {e}")))?;
    let header = object::c_header(&program, model);
    let readme = cpu_readme(args, model, &program);
    // Files go to a temporary folder; errors name where they were meant to end up.
    let failed = |name: &str, e: std::io::Error| {
        CliError::msg(format!(
            "cannot write `{}`: {e}",
            args.output.join(name).display()
        ))
    };
    let fill = |temp: &Path| -> Result<(), CliError> {
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(temp.join(name), bytes).map_err(|e| failed(name, e))
        };
        write("model.o", &program.object)?;
        write("model.h", header.as_bytes())?;
        write("bbcrt.h", BBCRT_HEADER.as_bytes())?;
        write("README.txt", readme.as_bytes())?;
        write_weights(
            &temp.join("weights.bin"),
            program.constants.iter().map(Vec::as_slice),
        )
        .map_err(|e| failed("weights.bin", e))
    };
    write_program_dir(&args.output, args.force, fill, |m: String| CliError::msg(m))?;
    let stats = &program.stats;
    note!(
        "wrote `{}`: symbol `{symbol}`, {} steps ({} loop, {} conv ({} banded depthwise \
         groups), {} gemm, {} pool, {} norm; {} concatenations written in place), {} functions \
         ({:.1} KiB of code), weights {:.1} MiB; needs {}",
        args.output.display(),
        stats.steps(),
        stats.loop_kernels,
        stats.conv_kernels,
        stats.band_groups,
        stats.gemm_kernels,
        stats.pool_kernels,
        stats.norm_kernels,
        stats.concats_in_place,
        program.desc.functions.len(),
        stats.code_bytes as f64 / 1024.0,
        program.constants.iter().map(Vec::len).sum::<usize>() as f64 * 4.0 / (1 << 20) as f64,
        match program.cpu_features.as_slice() {
            [] => "no CPU extension".to_string(),
            names => names.join(", "),
        }
    );
    Ok(())
}

/// The inputs and outputs part of a program folder's README.
fn io_lines<'a>(
    out: &mut String,
    inputs: impl Iterator<Item = (&'a str, &'a [usize])>,
    outputs: impl Iterator<Item = (&'a str, &'a [usize])>,
) {
    let _ = writeln!(out, "Inputs (f32, row-major):");
    for (name, dims) in inputs {
        let _ = writeln!(out, "  {name} {}", shape(dims));
    }
    let _ = writeln!(out, "Outputs (f32, row-major):");
    for (name, dims) in outputs {
        let _ = writeln!(out, "  {name} {}", shape(dims));
    }
}

/// The first line of a program folder's README.
fn title(args: &CompileArgs, model: &str) -> String {
    format!(
        "Model `{model}` from {}, compiled by bbc {} for --target {}.\n",
        args.spec.spec.display(),
        env!("CARGO_PKG_VERSION"),
        args.target.name()
    )
}

/// The CPU program folder's README: what it holds and how to link and run it.
fn cpu_readme(args: &CompileArgs, model: &str, program: &ObjectProgram) -> String {
    let mut out = title(args, model);
    io_lines(
        &mut out,
        program
            .desc
            .inputs
            .iter()
            .map(|i| (i.name.as_str(), i.shape.as_slice())),
        program
            .desc
            .outputs
            .iter()
            .map(|o| (o.name.as_str(), o.shape.as_slice())),
    );
    let symbol = &program.symbol;
    let _ = write!(
        out,
        "\nFiles:\n  model.o      the kernels, the plan and the descriptor `{symbol}` (this \
         CPU's code:\n               it needs {})\n  model.h      declares `{symbol}`, lists the \
         inputs and outputs\n  bbcrt.h      the runtime library's C API\n  weights.bin  the \
         prepared weights (little-endian f32), checked by size and\n               digest \
         when loaded\n\n\
         From C, with the runtime library (`cargo build -p bbc-rt --release` in the bbc \
         sources\nbuilds target/release/libbbcrt.a and libbbcrt.so):\n\n    \
         #include \"model.h\"\n    \
         bbcrt_error *err = NULL;\n    \
         bbcrt_model *m = bbcrt_model_load(&{symbol}, \"weights.bin\", 0, &err);\n    \
         if (!m) {{ fprintf(stderr, \"%s\\n\", bbcrt_error_message(err)); ... }}\n    \
         const float *in[] = {{x}};        size_t in_lens[] = {{x_len}};\n    \
         float *out[] = {{y}};             size_t out_lens[] = {{y_len}};\n    \
         bbcrt_model_run(m, in, in_lens, out, out_lens, &err);\n    \
         bbcrt_model_free(m);\n\n    \
         cc prog.c model.o -I. path/to/libbbcrt.a -lpthread -ldl -lm               (static)\n    \
         cc prog.c model.o -I. -Lpath/to -lbbcrt -Wl,-rpath,path/to -lm   (libbbcrt.so)\n\n\
         From Rust, with only the bbc-runtime crate and model.o linked (e.g.\n\
         `cargo:rustc-link-arg=DIR/model.o` in a build script):\n\n    \
         extern \"C\" {{ static {symbol}: bbc_runtime::aot::ModelDescriptor; }}\n    \
         let mut m = unsafe {{ bbc_runtime::aot::Model::load(&{symbol}, \"weights.bin\".as_ref(), 0)? }};\n    \
         let outputs = m.run(&[&x])?;\n",
        match program.cpu_features.as_slice() {
            [] => "no CPU extension".to_string(),
            names => names.join(", "),
        }
    );
    out
}

/// The GPU program folder's README: what it holds and how to run it.
fn gpu_readme(args: &CompileArgs, model: &str, plan: &LaunchPlan) -> String {
    let mut out = title(args, model);
    io_lines(
        &mut out,
        plan.inputs
            .iter()
            .map(|i| (i.name.as_str(), i.shape.as_slice())),
        plan.outputs
            .iter()
            .map(|o| (o.name.as_str(), o.shape.as_slice())),
    );
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
