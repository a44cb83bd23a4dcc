//! The pipeline from a spec to a runnable [`Model`], in one place: loading a spec, binding
//! the model's size parameters and arguments, choosing the optimisation passes, reading or
//! initialising the weights, and compiling for a [`Target`]. [`CompileOptions`] runs it all
//! at once ([`CompileOptions::compile_file`]) or stage by stage, for callers (such as the
//! `bbc` command line) that do something between the stages.

use crate::error::{Diagnostics, Error, Result};
use crate::model::{Engine, GpuExecutor, Model};
use bbc_compiler::codegen::cpu::plan::{self, ExecOptions};
use bbc_compiler::codegen::gpu::{self, GpuOptions};
use bbc_compiler::elab::{self, Elaborated, FsLoader, Loader, Program};
use bbc_compiler::ir::Graph;
use bbc_compiler::passes::{self, Pass};
use bbc_compiler::{stats, weights};
use bbc_runtime::gpu::{cuda, wgpu, Dialect, GpuError};
use bbc_runtime::{DType, EntryInfo, Tensor};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Where a model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Target {
    /// Native code for this CPU: Cranelift-compiled kernels and tuned GEMM/convolution
    /// kernels on a thread pool.
    #[default]
    Cpu,
    /// The reference interpreter: exact (f64 accumulation), not fast; the oracle every
    /// other target is checked against.
    Interp,
    /// WGSL compute shaders on a Vulkan device through wgpu (`BBC_GPU_ADAPTER` picks an
    /// adapter by name).
    Gpu,
    /// CUDA C compiled at load time by NVRTC, on an NVIDIA GPU.
    Cuda,
}

impl Target {
    /// Every target, in the order of this enum.
    pub const ALL: [Target; 4] = [Target::Cpu, Target::Interp, Target::Gpu, Target::Cuda];

    /// The target's name: `cpu`, `interp`, `gpu` or `cuda` (what [`Target::from_str`] reads).
    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Interp => "interp",
            Target::Gpu => "gpu",
            Target::Cuda => "cuda",
        }
    }

    /// Whether the target leaves pass `name` out of a level's pipeline (a pass list given
    /// by name runs as given). The CPU leaves attention unfused: its products then run on
    /// the GEMM kernels, which beat the fused loop kernel's per-row dot products even
    /// counting the score matrix they write (TNT-S, 2 threads: its outer attentions 37.6 ->
    /// 8.5 ms per inference, the inner ones 15.0 -> 11.3, the model 114 -> 83 ms).
    pub fn declines_pass(self, name: &str) -> bool {
        self == Target::Cpu && name == "fuse-attention"
    }

    /// The kernel language of a GPU target; `None` for the CPU and the interpreter.
    pub fn dialect(self) -> Option<Dialect> {
        match self {
            Target::Cpu | Target::Interp => None,
            Target::Gpu => Some(Dialect::Wgsl),
            Target::Cuda => Some(Dialect::Cuda),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Target {
    type Err = Error;

    /// Reads a target's name.
    ///
    /// ```
    /// assert_eq!("cuda".parse::<bbc::Target>().unwrap(), bbc::Target::Cuda);
    /// assert!("tpu".parse::<bbc::Target>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Target> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
                Error::Options(format!(
                    "unknown target `{s}`; targets: {}",
                    names.join(", ")
                ))
            })
    }
}

/// Where a model's weights come from.
#[derive(Clone)]
pub enum Weights {
    /// PyTorch's default initialisation of every parameter, from this seed (one random
    /// stream per state_dict key, so a parameter's values do not depend on the others).
    Seeded(u64),
    /// A safetensors checkpoint (F32, F16 or BF16 entries), checked against the model from
    /// its header before anything is read; the model's `rename`/`ignore` rules apply.
    File(PathBuf),
    /// Tensors by state_dict key, checked like a checkpoint (the `rename`/`ignore` rules
    /// apply to these keys too).
    Tensors(BTreeMap<String, Tensor>),
}

impl Default for Weights {
    /// Seeded initialisation with seed 0, as `bbc run` does by default.
    fn default() -> Weights {
        Weights::Seeded(0)
    }
}

impl fmt::Debug for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Weights::Seeded(seed) => f.debug_tuple("Seeded").field(seed).finish(),
            Weights::File(path) => f.debug_tuple("File").field(path).finish(),
            Weights::Tensors(t) => write!(f, "Tensors({} entries)", t.len()),
        }
    }
}

impl Weights {
    /// The weights of `model` (elaborated from `program`) by state_dict key: checked
    /// against the model's parameter table, every problem reported at the line that
    /// declared the parameter. Given tensors are borrowed unless `rename` rules change
    /// their keys.
    pub fn load(
        &self,
        program: &Program,
        model: &Elaborated,
    ) -> Result<Cow<'_, BTreeMap<String, Tensor>>> {
        let diagnose = |d| Error::Weights(Diagnostics::copied(d, &program.sources));
        match self {
            Weights::Seeded(seed) => Ok(Cow::Owned(weights::init_weights(&model.graph, *seed))),
            Weights::File(path) => weights::load_file(model, path)
                .map(Cow::Owned)
                .map_err(diagnose),
            Weights::Tensors(tensors) => {
                let entries: Vec<EntryInfo> = tensors
                    .iter()
                    .map(|(name, t)| EntryInfo {
                        name: name.clone(),
                        dtype: DType::F32,
                        shape: t.shape().to_vec(),
                    })
                    .collect();
                let keys =
                    weights::check(model, &entries, "the given tensors").map_err(diagnose)?;
                if keys.iter().all(|(model_key, given)| model_key == given) {
                    return Ok(Cow::Borrowed(tensors));
                }
                Ok(Cow::Owned(
                    keys.into_iter()
                        .filter_map(|(model_key, given)| {
                            tensors.get(&given).map(|t| (model_key, t.clone()))
                        })
                        .collect(),
                ))
            }
        }
    }
}

/// How to compile a spec into a [`Model`]: which model, its size parameters and arguments,
/// the optimisation level, the target and the weights. A builder: each setter takes and
/// returns the options, and the options can be reused for several compilations.
///
/// ```
/// # fn main() -> bbc::Result<()> {
/// let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/deep_sets.bb");
/// let model = bbc::Model::builder()
///     .model("deep_sets_sum")
///     .dim("N", 7) // a size parameter of the input `x: f32[B=2, N=5, d_in]`
///     .arg("hidden", "16") // a parameter of the model itself
///     .opt_level(2)
///     .threads(1)
///     .target(bbc::Target::Cpu)
///     .weights(bbc::Weights::Seeded(0))
///     .compile_file(spec)?;
/// assert_eq!(model.inputs()[0].shape, [2, 7, 3]);
/// assert_eq!(model.outputs()[0].shape, [2, 1]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    model: Option<String>,
    dims: Vec<(String, i64)>,
    args: Vec<(String, String)>,
    opt_level: Option<u8>,
    passes: Option<Vec<String>>,
    skip_passes: Vec<String>,
    threads: Option<usize>,
    target: Target,
    weights: Weights,
    tensor_cores: bool,
}

impl CompileOptions {
    /// The defaults: the spec's default model (its last) with its default sizes, `-O2`
    /// (`-O0` on the interpreter), all cores of this CPU, weights seeded with 0.
    pub fn new() -> CompileOptions {
        CompileOptions::default()
    }

    /// Builds this model or model variant of the spec instead of its last one.
    pub fn model(mut self, name: impl Into<String>) -> CompileOptions {
        self.model = Some(name.into());
        self
    }

    /// Binds a size parameter, a named dimension of an `input` (`H` in
    /// `input x: f32[B=1, 3, H=224, W=224]`); binding a name again replaces its value.
    /// Values must be positive; a name the model does not declare is an [`Error::Spec`].
    pub fn dim(mut self, name: impl Into<String>, value: i64) -> CompileOptions {
        let name = name.into();
        self.dims.retain(|(n, _)| *n != name);
        self.dims.push((name, value));
        self
    }

    /// Sets a parameter of the model itself (`phi` for `model v(phi: int) = base(...)`);
    /// `value` is a literal as it would appear in the spec: `3`, `1.5`, `true`, `"avg"`,
    /// `[1, 2]`. Setting a name again replaces its value.
    pub fn arg(mut self, name: impl Into<String>, value: impl Into<String>) -> CompileOptions {
        let name = name.into();
        self.args.retain(|(n, _)| *n != name);
        self.args.push((name, value.into()));
        self
    }

    /// The optimisation level: 0 none, 1 cleanup, 2 everything (fusion, layout, folding).
    /// Defaults to 2, or 0 on the interpreter.
    pub fn opt_level(mut self, level: u8) -> CompileOptions {
        self.opt_level = Some(level);
        self
    }

    /// Runs exactly these passes, in order, instead of a level's pipeline (names as
    /// `bbc ir --list-passes` prints them).
    pub fn passes<I, S>(mut self, names: I) -> CompileOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.passes = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Leaves this pass out of the pipeline.
    pub fn skip_pass(mut self, name: impl Into<String>) -> CompileOptions {
        self.skip_passes.push(name.into());
        self
    }

    /// Threads of the cpu target, the calling thread included; 0 (the default) means all
    /// cores. Setting it for another target is an [`Error::Options`].
    pub fn threads(mut self, threads: usize) -> CompileOptions {
        self.threads = Some(threads);
        self
    }

    /// Where the model runs ([`Target::Cpu`] by default).
    pub fn target(mut self, target: Target) -> CompileOptions {
        self.target = target;
        self
    }

    /// Where the weights come from ([`Weights::Seeded`] with 0 by default).
    pub fn weights(mut self, weights: Weights) -> CompileOptions {
        self.weights = weights;
        self
    }

    /// On the cuda target, runs matrix products on tensor cores (TF32: 10 mantissa bits)
    /// where their sizes allow. Off by default; setting it for another target is an
    /// [`Error::Options`].
    pub fn tensor_cores(mut self, on: bool) -> CompileOptions {
        self.tensor_cores = on;
        self
    }

    /// Loads the spec at `path` (and its imports) and compiles the selected model.
    pub fn compile_file(&self, path: impl AsRef<Path>) -> Result<Model> {
        self.compile(&load_spec(path)?)
    }

    /// Compiles the selected model of a spec given as text; `name` is the file name that
    /// diagnostics show, and imports are read relative to it.
    ///
    /// ```
    /// # fn main() -> bbc::Result<()> {
    /// let spec = "bb 0.1;
    /// model double(k: float = 2.0) {
    ///     input x: f32[N=4];
    ///     output y = x * k;
    /// }";
    /// let model = bbc::CompileOptions::new().arg("k", "3.0").compile_str("double.bb", spec)?;
    /// let x = ndarray::arr1(&[1.0f32, 2.0, 3.0, 4.0]);
    /// let y = model.run(&[x.view()])?;
    /// assert_eq!(y[0].as_slice().unwrap(), [3.0, 6.0, 9.0, 12.0]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn compile_str(&self, name: &str, text: &str) -> Result<Model> {
        self.compile(&parse_spec(name, text)?)
    }

    /// Compiles the selected model of a loaded spec: elaborates it, checks that it fits in
    /// memory, loads its weights and [builds](CompileOptions::build) it.
    pub fn compile(&self, program: &Program) -> Result<Model> {
        // Options are checked first, so a misspelt pass fails before any work is done.
        self.check_target()?;
        self.pipeline()?;
        let model = self.elaborate(program)?;
        check_memory(&model.graph)?;
        let weights = self.weights.load(program, &model)?;
        self.build(&model, &weights)
    }

    /// Elaborates the selected model of `program` with the size parameters and arguments
    /// bound: its Graph IR as written, with the declaring site of every parameter.
    pub fn elaborate(&self, program: &Program) -> Result<Elaborated> {
        let opts = elab::Options {
            model: self.model.clone(),
            dims: self.dims.clone(),
            args: self.args.clone(),
        };
        program
            .elaborate(&opts)
            .map_err(|d| Error::Spec(Diagnostics::copied(d, &program.sources)))
    }

    /// The weights of `model` ([`Weights::load`] on the chosen source).
    pub fn load_weights(
        &self,
        program: &Program,
        model: &Elaborated,
    ) -> Result<Cow<'_, BTreeMap<String, Tensor>>> {
        self.weights.load(program, model)
    }

    /// The optimisation passes these options select, every name checked.
    pub fn pipeline(&self) -> Result<Vec<Box<dyn Pass>>> {
        let known: Vec<&'static str> = passes::all().iter().map(|p| p.name()).collect();
        for name in self.passes.iter().flatten().chain(&self.skip_passes) {
            if !known.contains(&name.as_str()) {
                let hint = bbc_grammar::did_you_mean(name, known.iter().copied())
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                return Err(Error::Options(format!(
                    "unknown pass `{name}`{hint}; passes: {}",
                    known.join(", ")
                )));
            }
        }
        let default_level = if self.target == Target::Interp { 0 } else { 2 };
        let level = self.opt_level.unwrap_or(default_level);
        if level > 2 {
            return Err(Error::Options(format!(
                "optimisation level {level} does not exist (0 none, 1 cleanup, 2 everything)"
            )));
        }
        let chosen: Vec<Box<dyn Pass>> = match &self.passes {
            Some(names) => names.iter().filter_map(|n| passes::lookup(n)).collect(),
            None => passes::pipeline(level),
        };
        // Skipping a pass that would not run anyway is a mistaken expectation, not a no-op.
        for name in &self.skip_passes {
            if self.passes.iter().flatten().any(|n| n == name) {
                return Err(Error::Options(format!(
                    "pass `{name}` is both in the pass list and skipped"
                )));
            }
            if !chosen.iter().any(|p| p.name() == name) {
                let names: Vec<&str> = chosen.iter().map(|p| p.name()).collect();
                let runs = match (&self.passes, names.is_empty()) {
                    (Some(_), _) => format!("the pass list runs {}", names.join(", ")),
                    (None, true) => format!("optimisation level {level} runs no passes"),
                    (None, false) => {
                        format!("optimisation level {level} runs {}", names.join(", "))
                    }
                };
                return Err(Error::Options(format!(
                    "cannot skip pass `{name}`: it is not in the pipeline ({runs})"
                )));
            }
        }
        Ok(chosen
            .into_iter()
            .filter(|p| !self.skip_passes.iter().any(|s| s == p.name()))
            .collect())
    }

    /// `graph` after the selected passes (verified after each one), less those a level's
    /// pipeline leaves out on this target ([`Target::declines_pass`]).
    pub fn optimize(&self, graph: &Graph) -> Result<Graph> {
        let pipeline: Vec<_> = self
            .pipeline()?
            .into_iter()
            .filter(|p| self.passes.is_some() || !self.target.declines_pass(p.name()))
            .collect();
        let mut graph = graph.clone();
        passes::run(&mut graph, &pipeline, &Default::default()).map_err(|e| Error::Compile {
            target: self.target,
            message: e.to_string(),
        })?;
        Ok(graph)
    }

    /// Optimises `model` and compiles it with `weights` for the target. On a GPU target the
    /// device is opened first, so a machine without one fails at once with
    /// [`Error::GpuUnavailable`].
    pub fn build(&self, model: &Elaborated, weights: &BTreeMap<String, Tensor>) -> Result<Model> {
        self.check_target()?;
        let started = Instant::now();
        let graph = self.optimize(&model.graph)?;
        let mut times = vec![("optimize", started.elapsed())];
        let engine = match self.target {
            Target::Cpu => {
                let opts = ExecOptions {
                    threads: self.threads.unwrap_or(0),
                    ..ExecOptions::default()
                };
                let started = Instant::now();
                let exe = plan::compile(&graph, weights, &opts).map_err(|e| Error::Compile {
                    target: Target::Cpu,
                    message: e.to_string(),
                })?;
                let wall = started.elapsed();
                let stages = exe.stats().times;
                times.extend(stages.stages());
                // Whatever the stages do not cover (starting the threads, the executor).
                times.push(("other", wall.saturating_sub(stages.total())));
                Engine::cpu(exe)
            }
            Target::Interp => Engine::Interp {
                weights: interp_weights(&graph, weights)?,
            },
            Target::Gpu | Target::Cuda => {
                let opts = GpuOptions {
                    tensor_cores: self.tensor_cores,
                };
                let (exe, stages) = compile_gpu(&graph, weights, self.target, &opts)?;
                times.extend(stages);
                Engine::gpu(exe)
            }
        };
        Model::new(model.model.clone(), self.target, graph, engine, times)
    }

    /// Refuses options the chosen target does not have.
    fn check_target(&self) -> Result<()> {
        if self.threads.is_some() && self.target != Target::Cpu {
            return Err(Error::Options(format!(
                "threads are an option of the cpu target, not of the {} target",
                self.target
            )));
        }
        if self.tensor_cores && self.target != Target::Cuda {
            return Err(Error::Options(format!(
                "tensor cores are an option of the cuda target, not of the {} target",
                self.target
            )));
        }
        Ok(())
    }
}

/// The weights the interpreter keeps: the graph's parameters, each checked for presence
/// and shape now rather than at the first run.
fn interp_weights(
    graph: &Graph,
    weights: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    let compile_error = |message: String| Error::Compile {
        target: Target::Interp,
        message,
    };
    weights::param_table(graph)
        .into_iter()
        .map(|p| match weights.get(&p.key) {
            Some(t) if t.shape() == p.shape.as_slice() => Ok((p.key, t.clone())),
            Some(t) => Err(compile_error(format!(
                "parameter `{}` has shape {:?}, the model expects {:?}",
                p.key,
                t.shape(),
                p.shape
            ))),
            None => Err(compile_error(format!("no value for parameter `{}`", p.key))),
        })
        .collect()
}

/// Maps a GPU runtime error met while loading: a missing device or backend is
/// [`Error::GpuUnavailable`], anything else a compile error.
fn gpu_load_error(target: Target) -> impl Fn(GpuError) -> Error {
    move |e| match e {
        GpuError::NoDevice(_) | GpuError::NotBuilt(_) => Error::GpuUnavailable(e.to_string()),
        e => Error::Compile {
            target,
            message: e.to_string(),
        },
    }
}

/// Generates `graph`'s kernels for a GPU `target` and loads them on its device: the
/// executor and the time of each stage (opening the device, code generation, loading:
/// compiling the kernels and uploading the constants).
fn compile_gpu(
    graph: &Graph,
    weights: &BTreeMap<String, Tensor>,
    target: Target,
    opts: &GpuOptions,
) -> Result<(GpuExecutor, Vec<(&'static str, Duration)>)> {
    let load_error = gpu_load_error(target);
    let Some(dialect) = target.dialect() else {
        return Err(Error::Options(format!("{target} is not a GPU target")));
    };
    // The device first: a machine without one fails before code generation.
    let started = Instant::now();
    let device = match dialect {
        Dialect::Wgsl => Some(wgpu::WgpuDevice::open().map_err(&load_error)?),
        Dialect::Cuda => {
            cuda::check_libraries().map_err(&load_error)?;
            None
        }
    };
    let mut stages = vec![("device", started.elapsed())];
    let started = Instant::now();
    let (plan, constants) =
        gpu::plan::build(graph, weights, dialect, opts).map_err(|e| Error::Compile {
            target,
            message: e.to_string(),
        })?;
    stages.push(("codegen", started.elapsed()));
    let started = Instant::now();
    let exe = match device {
        Some(device) => GpuExecutor::Vulkan(
            wgpu::WgpuExecutor::with_device(&device, plan, &constants).map_err(&load_error)?,
        ),
        None => GpuExecutor::Cuda(cuda::CudaExecutor::new(plan, &constants).map_err(&load_error)?),
    };
    stages.push(("load", started.elapsed()));
    Ok((exe, stages))
}

/// Loads the spec at `path` and, recursively, its imports; every syntax or import error is
/// reported.
pub fn load_spec(path: impl AsRef<Path>) -> Result<Program> {
    Program::load(path.as_ref(), &FsLoader)
        .map_err(|e| Error::Spec(Diagnostics::new(e.diagnostics, e.sources)))
}

/// Parses a spec given as text; `name` is the file name that diagnostics show, and imports
/// are read from disk relative to it.
pub fn parse_spec(name: &str, text: &str) -> Result<Program> {
    let loader = TextLoader {
        path: Path::new(name),
        text,
    };
    Program::load(Path::new(name), &loader)
        .map_err(|e| Error::Spec(Diagnostics::new(e.diagnostics, e.sources)))
}

/// Serves one spec from memory and its imports from disk.
struct TextLoader<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Loader for TextLoader<'_> {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        if path == self.path {
            Ok(self.text.to_string())
        } else {
            FsLoader.read(path)
        }
    }
}

/// Refuses a model whose weights, inputs and peak activations cannot fit in the memory this
/// machine has available, instead of letting an allocation abort the process. Machines that
/// do not report available memory (no `/proc/meminfo`) are not checked.
pub fn check_memory(graph: &Graph) -> Result<()> {
    let s = stats::stats(graph);
    let weights = (s.params + s.buffers) * 4;
    let need = weights + s.input_bytes + s.peak_bytes;
    let Some(available) = available_memory() else {
        return Ok(());
    };
    if need <= available {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(Error::Memory(format!(
        "running this model needs about {:.1} GiB (weights {:.1}, inputs {:.1}, peak \
         activations {:.1}) but only {:.1} GiB of memory are available",
        gib(need),
        gib(weights),
        gib(s.input_bytes),
        gib(s.peak_bytes),
        gib(available)
    )))
}

/// The memory this process can still take: the least of what the kernel reports available
/// (`MemAvailable`), what its cgroup's limit leaves (a container's limit, which
/// `MemAvailable` does not show) and what its address-space limit leaves (`ulimit -v`,
/// where an allocation past it fails and aborts). `None` where none can be read.
fn available_memory() -> Option<u64> {
    [
        meminfo_available(),
        cgroup_headroom(),
        address_space_headroom(),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// `MemAvailable` from /proc/meminfo, where there is one.
fn meminfo_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The memory cgroup's limit less its usage: cgroup v2 (`memory.max`, `memory.current`) or
/// v1 (`memory.limit_in_bytes`, `memory.usage_in_bytes`), in the process's own cgroup folder
/// or, as inside most containers, mounted at the root. `None` without a limit.
fn cgroup_headroom() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read =
        |path: String| -> Option<u64> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    let mut least: Option<u64> = None;
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (root, limit, usage) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max", "memory.current")
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        } else {
            continue;
        };
        let path = path.trim_end_matches('/');
        for folder in [format!("{root}{path}"), root.to_string()] {
            // v2's "max" (no limit) does not parse, and reads as none.
            if let (Some(l), Some(u)) = (
                read(format!("{folder}/{limit}")),
                read(format!("{folder}/{usage}")),
            ) {
                let headroom = l.saturating_sub(u);
                least = Some(least.map_or(headroom, |m| m.min(headroom)));
                break;
            }
        }
    }
    least
}

/// The address-space limit (`ulimit -v`, the soft limit in /proc/self/limits) less the
/// process's virtual size; `None` where it is unlimited.
fn address_space_headroom() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    let limit: u64 = line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let size = status.lines().find(|l| l.starts_with("VmSize:"))?;
    let kib: u64 = size.split_whitespace().nth(1)?.parse().ok()?;
    Some(limit.saturating_sub(kib * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelines_follow_level_passes_and_skips() {
        let names = |o: CompileOptions| -> Vec<&'static str> {
            o.pipeline().unwrap().iter().map(|p| p.name()).collect()
        };
        assert_eq!(names(CompileOptions::new()).len(), passes::all().len());
        assert!(names(CompileOptions::new().target(Target::Interp)).is_empty());
        assert_eq!(
            names(CompileOptions::new().opt_level(1)),
            names(
                CompileOptions::new()
                    .opt_level(2)
                    .passes(passes::pipeline(1).iter().map(|p| p.name()))
            )
        );
        let skipped = names(CompileOptions::new().skip_pass("dce"));
        assert!(!skipped.contains(&"dce") && skipped.len() == passes::all().len() - 1);
        let Err(err) = CompileOptions::new().passes(["dcee"]).pipeline() else {
            panic!("a misspelt pass is accepted");
        };
        assert!(err.to_string().contains("did you mean `dce`?"), "{err}");
        assert!(CompileOptions::new().opt_level(3).pipeline().is_err());
        let Err(err) = CompileOptions::new()
            .opt_level(0)
            .skip_pass("cse")
            .pipeline()
        else {
            panic!("skipping a pass the pipeline does not run is accepted");
        };
        assert!(err.to_string().contains("level 0 runs no passes"), "{err}");
        let named_and_skipped = CompileOptions::new().passes(["dce"]).skip_pass("dce");
        assert!(named_and_skipped.pipeline().is_err());
    }

    #[test]
    fn the_cpu_leaves_attention_unfused_unless_it_is_named() {
        let graph = bbc_compiler::ir::parse_text(
            "graph t {
  input %q: f32[1, 2, 4, 3]
  input %k_t: f32[1, 2, 3, 4]
  input %v: f32[1, 2, 4, 3]
  %scores = matmul(%q, %k_t): f32[1, 2, 4, 4]
  %attn = softmax(%scores) {axis=-1}: f32[1, 2, 4, 4]
  %o = matmul(%attn, %v): f32[1, 2, 4, 3]
  output %y = %o
}",
        )
        .unwrap();
        let fused = |o: CompileOptions| {
            let g = o.optimize(&graph).unwrap();
            let text = bbc_compiler::ir::print_text(&g);
            text.contains("fused attention")
        };
        assert!(!fused(CompileOptions::new()));
        assert!(fused(CompileOptions::new().target(Target::Gpu)));
        assert!(fused(CompileOptions::new().passes(["fuse-attention"])));
        // The pipeline itself, as `bbc ir` shows it, still lists the pass.
        assert!(CompileOptions::new()
            .pipeline()
            .unwrap()
            .iter()
            .any(|p| p.name() == "fuse-attention"));
    }

    #[test]
    fn rebinding_a_dim_or_arg_replaces_it() {
        let o = CompileOptions::new()
            .dim("H", 8)
            .dim("W", 4)
            .dim("H", 16)
            .arg("k", "1")
            .arg("k", "2");
        assert_eq!(o.dims, [("W".to_string(), 4), ("H".to_string(), 16)]);
        assert_eq!(o.args, [("k".to_string(), "2".to_string())]);
    }

    #[test]
    fn options_of_another_target_are_refused() {
        let refused = |o: CompileOptions| matches!(o.check_target(), Err(Error::Options(_)));
        assert!(refused(
            CompileOptions::new().target(Target::Gpu).threads(2)
        ));
        assert!(refused(CompileOptions::new().tensor_cores(true)));
        assert!(!refused(CompileOptions::new().threads(2)));
        assert!(!refused(
            CompileOptions::new()
                .target(Target::Cuda)
                .tensor_cores(true)
        ));
    }

    #[test]
    fn given_tensors_are_checked_like_a_checkpoint() {
        let program =
            load_spec(concat!(env!("CARGO_MANIFEST_DIR"), "/specs/deep_sets.bb")).unwrap();
        let opts = CompileOptions::new().model("deep_sets_sum");
        let model = opts.elaborate(&program).unwrap();
        let seeded = Weights::Seeded(3)
            .load(&program, &model)
            .unwrap()
            .into_owned();
        let given = Weights::Tensors(seeded.clone());
        assert!(matches!(given.load(&program, &model), Ok(Cow::Borrowed(_))));

        let run = |weights: Weights| {
            let compiled = opts.clone().weights(weights).compile(&program).unwrap();
            let x = compiled.random_inputs(0);
            compiled.run(&[x[0].view()]).unwrap()
        };
        assert_eq!(run(given), run(Weights::Seeded(3)));

        let mut partial = seeded;
        let key = partial.keys().next().unwrap().clone();
        partial.remove(&key);
        match opts
            .clone()
            .weights(Weights::Tensors(partial))
            .compile(&program)
        {
            Err(Error::Weights(d)) => {
                let text = d.to_string();
                assert!(text.contains(&format!("`{key}`")), "{text}");
                assert!(text.contains("missing from the given tensors"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_spec_given_as_text_imports_from_beside_its_name() {
        let name = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/inline.bb");
        let text = "bb 0.1;\nimport \"deep_sets.bb\";\nmodel small = deep_sets(hidden=4);\n";
        let model = CompileOptions::new().compile_str(name, text).unwrap();
        assert_eq!(model.name(), "small");
        assert_eq!(model.inputs()[0].shape, [2, 5, 3]);
        let Err(Error::Spec(d)) = CompileOptions::new().compile_str("elsewhere/inline.bb", text)
        else {
            panic!("an import that is not there compiles");
        };
        assert!(d.to_string().contains("elsewhere/deep_sets.bb"), "{d}");
    }

    #[test]
    fn target_names_read_back() {
        for t in Target::ALL {
            assert_eq!(t.name().parse::<Target>().unwrap(), t);
            assert_eq!(t.to_string(), t.name());
        }
    }
}
