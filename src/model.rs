//! A compiled [`Model`]: its inputs and outputs, running it on arrays or on raw buffers from
//! any number of threads, and what it is made of (compile times, executor statistics,
//! per-kernel profiles).

use crate::error::{Error, Result};
use crate::options::{CompileOptions, Target};
use bbc_compiler::codegen::cpu::plan::{ExecError, ExecStats, Executable};
use bbc_compiler::interp;
use bbc_compiler::ir::{Graph, ValueId};
use bbc_runtime::gpu::{cuda, wgpu, Executor, GpuError, LaunchPlan};
use bbc_runtime::{Rng, Tensor};
use ndarray::{ArrayView, Dimension, IxDyn};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The name and shape of one input or output of a [`Model`]. Every tensor is `f32`,
/// row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The name the spec gives it (`x` for `input x: ...`, `y` for `output y = ...`).
    pub name: String,
    /// Its static shape.
    pub shape: Vec<usize>,
}

impl TensorInfo {
    /// The number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it has no elements (a zero-sized dimension).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The time one step (kernel) of a model took, summed over the runs since profiling was
/// turned on ([`Model::set_profiling`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepTime {
    /// The step's name: the Graph IR node it computes.
    pub step: String,
    /// On the cpu target, the kind of kernel: `loops`, `conv`, `depthwise`, `gemm` or
    /// `reference`; `None` on a GPU, where every step is one launch.
    pub kind: Option<&'static str>,
    /// Wall time on the CPU, device time on a GPU, summed over the profiled runs.
    pub time: Duration,
    /// On the cpu target, the fastest profiled run's wall time.
    pub fastest: Option<Duration>,
}

/// A spec's model compiled for one target, with its weights: compile once, run many times.
///
/// A `Model` is `Send + Sync`: share it between threads (`Arc<Model>`, or `&Model` in a
/// scope) and call [`Model::run`] from any of them. On the cpu target one run already uses
/// every thread of the model's pool, so concurrent runs take turns; on a GPU they take
/// turns on the device; the interpreter runs them in parallel.
///
/// ```
/// # fn main() -> bbc::Result<()> {
/// let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/deep_sets.bb");
/// let model = bbc::Model::builder().model("deep_sets_masked").compile_file(spec)?;
/// let names: Vec<&str> = model.inputs().iter().map(|i| i.name.as_str()).collect();
/// assert_eq!(names, ["x", "mask"]);
/// let inputs = model.random_inputs(7);
/// let views: Vec<_> = inputs.iter().map(|t| t.view()).collect();
/// std::thread::scope(|s| {
///     let runs: Vec<_> = (0..3).map(|_| s.spawn(|| model.run(&views))).collect();
///     let first = model.run(&views).unwrap();
///     for run in runs {
///         assert_eq!(run.join().unwrap().unwrap(), first);
///     }
/// });
/// # Ok(())
/// # }
/// ```
pub struct Model {
    name: String,
    target: Target,
    graph: Graph,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    compile_times: Vec<(&'static str, Duration)>,
    engine: Engine,
}

/// What runs a model. Executors that a run mutates sit behind a mutex, which makes the
/// model `Sync`.
// A model holds one engine, so the variants' sizes differing costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Engine {
    Cpu {
        exe: Mutex<Executable>,
        stats: ExecStats,
    },
    Interp {
        weights: BTreeMap<String, Tensor>,
    },
    Gpu {
        exe: Mutex<GpuExecutor>,
        device: String,
    },
}

impl Engine {
    pub(crate) fn cpu(exe: Executable) -> Engine {
        Engine::Cpu {
            stats: exe.stats().clone(),
            exe: Mutex::new(exe),
        }
    }

    pub(crate) fn gpu(mut exe: GpuExecutor) -> Engine {
        Engine::Gpu {
            device: exe.get().device_name(),
            exe: Mutex::new(exe),
        }
    }
}

/// A loaded GPU program. The executors are named concretely (rather than as
/// `dyn Executor`) because both are `Send`, which the trait does not promise.
#[allow(clippy::large_enum_variant)]
pub(crate) enum GpuExecutor {
    Vulkan(wgpu::WgpuExecutor),
    Cuda(cuda::CudaExecutor),
}

impl GpuExecutor {
    fn get(&mut self) -> &mut dyn Executor {
        match self {
            GpuExecutor::Vulkan(e) => e,
            GpuExecutor::Cuda(e) => e,
        }
    }
}

/// Locks an executor. A run that panicked leaves nothing the next run depends on (every
/// run rewrites the arena from its inputs), so a poisoned lock is taken over.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Name and shape of each named value of `graph`.
fn infos<'a>(
    graph: &'a Graph,
    values: impl Iterator<Item = (&'a str, ValueId)>,
) -> Vec<TensorInfo> {
    values
        .map(|(name, id)| TensorInfo {
            name: name.to_string(),
            shape: graph.node(id).shape.clone(),
        })
        .collect()
}

impl Model {
    /// Options to compile a model with; the same as [`CompileOptions::new`].
    pub fn builder() -> CompileOptions {
        CompileOptions::new()
    }

    pub(crate) fn new(
        name: String,
        target: Target,
        graph: Graph,
        engine: Engine,
        compile_times: Vec<(&'static str, Duration)>,
    ) -> Result<Model> {
        let inputs = infos(
            &graph,
            graph
                .inputs
                .iter()
                .map(|&i| (graph.node(i).name.as_str(), i)),
        );
        let outputs = infos(
            &graph,
            graph.outputs.iter().map(|o| (o.name.as_str(), o.value)),
        );
        if let Engine::Gpu { exe, .. } = &engine {
            // `run_into` hands buffers to the launch plan in the graph's order.
            let mut exe = lock(exe);
            let plan = exe.get().plan();
            let same = |decls: &[bbc_runtime::gpu::IoDecl], infos: &[TensorInfo]| {
                decls.len() == infos.len()
                    && decls
                        .iter()
                        .zip(infos)
                        .all(|(d, i)| d.name == i.name && d.shape == i.shape)
            };
            if !same(&plan.inputs, &inputs) || !same(&plan.outputs, &outputs) {
                return Err(Error::Compile {
                    target,
                    message: "internal error: the launch plan's inputs or outputs differ from \
                              the graph's"
                        .to_string(),
                });
            }
        }
        Ok(Model {
            name,
            target,
            graph,
            inputs,
            outputs,
            compile_times,
            engine,
        })
    }

    /// The model's name in the spec (the variant's name for a model variant).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it runs.
    pub fn target(&self) -> Target {
        self.target
    }

    /// Its inputs, in the order [`Model::run`] and [`Model::run_into`] take them: the
    /// spec's `input` declarations in order.
    pub fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    /// Its outputs, in the order the runs return them: the spec's `output`s in order.
    pub fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    /// The optimised Graph IR the model was compiled from.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Compile time by stage, in order: `optimize`, then on the cpu target `lowering`,
    /// `jit`, `prepare` (values computed from the weights alone), `weights` (packing),
    /// `planning` and `other`; on a GPU `device`, `codegen` and `load`. Loading the spec and
    /// the weights is not included.
    pub fn compile_times(&self) -> &[(&'static str, Duration)] {
        &self.compile_times
    }

    /// What the cpu target's executable is made of (kernels by kind, arena and scratch
    /// bytes, threads, nodes without a kernel); `None` on other targets.
    pub fn exec_stats(&self) -> Option<&ExecStats> {
        match &self.engine {
            Engine::Cpu { stats, .. } => Some(stats),
            _ => None,
        }
    }

    /// A GPU target's launch plan (buffers, kernels, launches); `None` on other targets.
    pub fn gpu_plan(&self) -> Option<LaunchPlan> {
        match &self.engine {
            Engine::Gpu { exe, .. } => Some(lock(exe).get().plan().clone()),
            _ => None,
        }
    }

    /// A GPU target's device, as its driver names it; `None` on other targets.
    pub fn device_name(&self) -> Option<&str> {
        match &self.engine {
            Engine::Gpu { device, .. } => Some(device),
            _ => None,
        }
    }

    /// Inputs drawn from N(0, 1) with `seed`, in [`Model::inputs`] order: the tensors
    /// `bbc run` uses for inputs it is not given.
    pub fn random_inputs(&self, seed: u64) -> Vec<Tensor> {
        self.inputs
            .iter()
            .map(|i| random_input(seed, &i.name, &i.shape))
            .collect()
    }

    /// Runs one inference on arrays in [`Model::inputs`] order and returns the outputs in
    /// [`Model::outputs`] order. Inputs in standard (row-major) layout are read in place;
    /// others are copied into it first.
    ///
    /// ```
    /// # fn main() -> bbc::Result<()> {
    /// let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/convnext.bb");
    /// let model = bbc::Model::builder()
    ///     .model("convnext_test")
    ///     .dim("H", 32)
    ///     .dim("W", 32)
    ///     .compile_file(spec)?;
    /// let x = ndarray::Array4::<f32>::from_elem((1, 3, 32, 32), 0.5);
    /// let y = model.run(&[x.view()])?;
    /// assert_eq!(y[0].shape(), [1, 10]); // ten classes
    ///
    /// // A wrong shape is an error, not a panic.
    /// let small = ndarray::Array4::<f32>::zeros((1, 3, 16, 16));
    /// assert!(matches!(model.run(&[small.view()]), Err(bbc::Error::Input(_))));
    /// # Ok(())
    /// # }
    /// ```
    pub fn run<D: Dimension>(&self, inputs: &[ArrayView<'_, f32, D>]) -> Result<Vec<Tensor>> {
        self.check_count("input", &self.inputs, inputs.len())?;
        for (info, x) in self.inputs.iter().zip(inputs) {
            if x.shape() != info.shape.as_slice() {
                return Err(Error::Input(format!(
                    "input `{}` has shape {:?}, model `{}` expects {:?}",
                    info.name,
                    x.shape(),
                    self.name,
                    info.shape
                )));
            }
        }
        let rows: Vec<_> = inputs.iter().map(|x| x.as_standard_layout()).collect();
        let slices = rows
            .iter()
            .map(|x| {
                x.as_slice()
                    .ok_or_else(|| Error::Input("an input is not contiguous".to_string()))
            })
            .collect::<Result<Vec<&[f32]>>>()?;
        let mut data: Vec<Vec<f32>> = self.outputs.iter().map(|o| vec![0.0; o.len()]).collect();
        let mut outs: Vec<&mut [f32]> = data.iter_mut().map(Vec::as_mut_slice).collect();
        self.run_into(&slices, &mut outs)?;
        self.outputs
            .iter()
            .zip(data)
            .map(|(o, v)| {
                Tensor::from_shape_vec(IxDyn(&o.shape), v)
                    .map_err(|e| Error::Run(format!("output `{}`: {e}", o.name)))
            })
            .collect()
    }

    /// Runs one inference on row-major buffers, without copying them: `inputs[i]` holds
    /// input `i` of [`Model::inputs`], `outputs[i]` receives output `i` of
    /// [`Model::outputs`], each exactly as long as its shape's element count. On the cpu
    /// target nothing is allocated per run beyond what the GEMM library does.
    ///
    /// ```
    /// # fn main() -> bbc::Result<()> {
    /// let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/deep_sets.bb");
    /// let model = bbc::Model::builder().model("deep_sets_sum").compile_file(spec)?;
    /// let x: Vec<f32> = (0..model.inputs()[0].len()).map(|i| i as f32 / 10.0).collect();
    /// let mut y = vec![0.0f32; model.outputs()[0].len()];
    /// model.run_into(&[&x], &mut [&mut y])?;
    ///
    /// // The same as the reference interpreter, to rounding.
    /// let oracle = bbc::Model::builder()
    ///     .model("deep_sets_sum")
    ///     .target(bbc::Target::Interp)
    ///     .compile_file(spec)?;
    /// let mut want = vec![0.0f32; y.len()];
    /// oracle.run_into(&[&x], &mut [&mut want])?;
    /// for (a, b) in y.iter().zip(&want) {
    ///     assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0));
    /// }
    ///
    /// // A buffer of the wrong length is an error.
    /// assert!(model.run_into(&[&x[1..]], &mut [&mut y]).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn run_into(&self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<()> {
        self.check_buffers("input", &self.inputs, inputs.iter().map(|b| b.len()))?;
        self.check_buffers("output", &self.outputs, outputs.iter().map(|b| b.len()))?;
        match &self.engine {
            Engine::Cpu { exe, .. } => lock(exe).run_into(inputs, outputs).map_err(exec_error),
            Engine::Gpu { exe, .. } => lock(exe)
                .get()
                .run_into(inputs, outputs)
                .map_err(gpu_run_error),
            Engine::Interp { weights } => {
                let mut named = HashMap::with_capacity(inputs.len());
                for (info, data) in self.inputs.iter().zip(inputs) {
                    let t = Tensor::from_shape_vec(IxDyn(&info.shape), data.to_vec())
                        .map_err(|e| Error::Input(format!("input `{}`: {e}", info.name)))?;
                    named.insert(info.name.clone(), t);
                }
                let results = interp::run(&self.graph, &named, weights)
                    .map_err(|e| Error::Run(e.to_string()))?;
                for (info, out) in self.outputs.iter().zip(outputs.iter_mut()) {
                    let t = results.get(&info.name).ok_or_else(|| {
                        Error::Run(format!("the interpreter computed no `{}`", info.name))
                    })?;
                    for (dst, src) in out.iter_mut().zip(t.iter()) {
                        *dst = *src;
                    }
                }
                Ok(())
            }
        }
    }

    /// Turns per-step timing on (resetting the totals) or off. An error on the interpreter,
    /// and on a GPU whose device cannot time single kernels.
    pub fn set_profiling(&self, on: bool) -> Result<()> {
        match &self.engine {
            Engine::Cpu { exe, .. } => {
                lock(exe).set_profiling(on);
                Ok(())
            }
            Engine::Gpu { exe, .. } => lock(exe)
                .get()
                .set_profiling(on)
                .map_err(|e| Error::Options(e.to_string())),
            Engine::Interp { .. } if on => Err(Error::Options(
                "the interp target has no per-step profile".to_string(),
            )),
            Engine::Interp { .. } => Ok(()),
        }
    }

    /// Time per step summed over the runs since profiling was turned on, slowest first;
    /// empty when profiling is off.
    pub fn profile(&self) -> Vec<StepTime> {
        match &self.engine {
            Engine::Cpu { exe, .. } => lock(exe)
                .profile()
                .into_iter()
                .map(|(step, kind, times)| StepTime {
                    step,
                    kind: Some(kind),
                    time: times.total,
                    fastest: times.fastest,
                })
                .collect(),
            Engine::Gpu { exe, .. } => lock(exe)
                .get()
                .profile()
                .into_iter()
                .map(|(step, time)| StepTime {
                    step,
                    kind: None,
                    time,
                    fastest: None,
                })
                .collect(),
            Engine::Interp { .. } => Vec::new(),
        }
    }

    fn check_count(&self, what: &str, infos: &[TensorInfo], given: usize) -> Result<()> {
        if given == infos.len() {
            return Ok(());
        }
        let names: Vec<&str> = infos.iter().map(|i| i.name.as_str()).collect();
        Err(Error::Input(format!(
            "model `{}` has {} {what}{} ({}), but {given} {} given",
            self.name,
            infos.len(),
            if infos.len() == 1 { "" } else { "s" },
            names.join(", "),
            if given == 1 { "was" } else { "were" }
        )))
    }

    fn check_buffers(
        &self,
        what: &str,
        infos: &[TensorInfo],
        lens: impl ExactSizeIterator<Item = usize>,
    ) -> Result<()> {
        self.check_count(what, infos, lens.len())?;
        for (info, len) in infos.iter().zip(lens) {
            if len != info.len() {
                return Err(Error::Input(format!(
                    "{what} `{}` {:?} has {} values, but its buffer holds {len}",
                    info.name,
                    info.shape,
                    info.len()
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("target", &self.target)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

fn exec_error(e: ExecError) -> Error {
    match e {
        ExecError::Inputs(m) => Error::Input(m),
        e => Error::Run(e.to_string()),
    }
}

fn gpu_run_error(e: GpuError) -> Error {
    match e {
        GpuError::Input(m) => Error::Input(m),
        e => Error::Run(e.to_string()),
    }
}

/// Input `name` drawn from N(0, 1) with `seed`: the same tensor for the same seed, whatever
/// the model's other inputs are. This is how `bbc run` fills inputs it is not given.
pub fn random_input(seed: u64, name: &str, shape: &[usize]) -> Tensor {
    Rng::new(seed)
        .fork("input")
        .fork(name)
        .standard_normal_tensor(shape)
}

/// Minimum, maximum, mean and (population) standard deviation of some values, as `bbc run`
/// prints them for each output.
///
/// ```
/// let s = bbc::Summary::of(&[1.0, 2.0, 3.0]).unwrap();
/// assert_eq!((s.min, s.max, s.mean), (1.0, 3.0, 2.0));
/// assert_eq!(s.to_string(), "min 1.000000  max 3.000000  mean 2.000000  std 0.816497");
/// assert!(bbc::Summary::of(&[]).is_none());
/// // NaNs are skipped by min and max, which are NaN only when every value is.
/// let s = bbc::Summary::of(&[f32::NAN, -1.0]).unwrap();
/// assert_eq!((s.min, s.max), (-1.0, -1.0));
/// let s = bbc::Summary::of(&[f32::NAN; 2]).unwrap();
/// assert!(s.min.is_nan() && s.max.is_nan());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// The smallest value (NaNs are skipped; NaN when every value is NaN).
    pub min: f64,
    /// The largest value (NaNs are skipped; NaN when every value is NaN).
    pub max: f64,
    /// The mean, accumulated in f64.
    pub mean: f64,
    /// The population standard deviation.
    pub std: f64,
}

impl Summary {
    /// The summary of `values` (any iterable of `&f32`, such as a slice or an array);
    /// `None` when there are none.
    pub fn of<'a>(values: impl IntoIterator<Item = &'a f32> + Clone) -> Option<Summary> {
        let (mut n, mut lo, mut hi, mut sum) = (0usize, f64::INFINITY, f64::NEG_INFINITY, 0.0);
        for &v in values.clone() {
            let v = f64::from(v);
            n += 1;
            lo = lo.min(v);
            hi = hi.max(v);
            sum += v;
        }
        if n == 0 {
            return None;
        }
        if lo > hi {
            // Every value was NaN (`min`/`max` skip NaNs): not ±inf.
            (lo, hi) = (f64::NAN, f64::NAN);
        }
        let mean = sum / n as f64;
        let var = values
            .into_iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        Some(Summary {
            min: lo,
            max: hi,
            mean,
            std: var.sqrt(),
        })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "min {:.6}  max {:.6}  mean {:.6}  std {:.6}",
            self.min, self.max, self.mean, self.std
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/convnext.bb");

    fn convnext(target: Target) -> Model {
        let opts = Model::builder()
            .model("convnext_test")
            .dim("H", 32)
            .dim("W", 32)
            .target(target);
        let opts = match target {
            Target::Cpu => opts.threads(2),
            _ => opts,
        };
        opts.compile_file(SPEC).unwrap()
    }

    /// `max |got - want| / max(1, max |want|)`: the backends' tolerance measure.
    fn deviation(got: &Tensor, want: &Tensor) -> f32 {
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        err / scale
    }

    #[test]
    fn models_are_send_and_sync() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Model>();
        shareable::<Error>();
    }

    #[test]
    fn threads_sharing_one_model_all_get_the_interpreters_answer() {
        let model = Arc::new(convnext(Target::Cpu));
        let oracle = convnext(Target::Interp);
        let handles: Vec<_> = (0..4u64)
            .map(|seed| {
                let model = Arc::clone(&model);
                std::thread::spawn(move || {
                    let x = model.random_inputs(seed);
                    (0..3)
                        .map(|_| model.run(&[x[0].view()]).unwrap().remove(0))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for (seed, handle) in (0..4u64).zip(handles) {
            let runs = handle.join().unwrap();
            let x = oracle.random_inputs(seed);
            let want = oracle.run(&[x[0].view()]).unwrap().remove(0);
            for got in runs {
                let dev = deviation(&got, &want);
                assert!(dev <= 2e-5, "seed {seed}: deviation {dev:e}");
            }
        }
    }

    /// Without a device a GPU target is a typed error, not a panic; with one (Mesa's
    /// lavapipe in CI, where `BBC_REQUIRE_GPU` makes a missing Vulkan adapter a failure) it
    /// computes the interpreter's answer.
    #[test]
    fn gpu_targets_match_the_interpreter_or_say_why_not() {
        let oracle = convnext(Target::Interp);
        let x = oracle.random_inputs(1);
        let want = oracle.run(&[x[0].view()]).unwrap().remove(0);
        for target in [Target::Gpu, Target::Cuda] {
            match Model::builder()
                .model("convnext_test")
                .dim("H", 32)
                .dim("W", 32)
                .target(target)
                .compile_file(SPEC)
            {
                Ok(model) => {
                    assert!(model.device_name().is_some() && model.gpu_plan().is_some());
                    let got = model.run(&[x[0].view()]).unwrap().remove(0);
                    let dev = deviation(&got, &want);
                    assert!(dev <= 2e-5, "{target}: deviation {dev:e}");
                }
                Err(Error::GpuUnavailable(why)) => {
                    let required = std::env::var_os("BBC_REQUIRE_GPU").is_some();
                    assert!(!(required && target == Target::Gpu), "{why}");
                    eprintln!("SKIPPED: no device for the {target} target ({why})");
                }
                Err(e) => panic!("{target}: {e}"),
            }
        }
    }

    #[test]
    fn non_standard_layouts_are_read_through_a_copy() {
        let model = convnext(Target::Cpu);
        let x = model.random_inputs(3).remove(0);
        // The same values, stored transposed: a view whose memory order is not row-major.
        let stored = x.t().as_standard_layout().into_owned();
        let view = stored.t();
        assert!(view.as_slice().is_none());
        assert_eq!(model.run(&[view]).unwrap(), model.run(&[x.view()]).unwrap());
    }

    #[test]
    fn mismatched_runs_are_input_errors() {
        let model = convnext(Target::Interp);
        let x = vec![0.0f32; model.inputs()[0].len()];
        let mut y = vec![0.0f32; model.outputs()[0].len()];
        let input_error = |r: Result<()>| match r {
            Err(Error::Input(m)) => m,
            other => panic!("{other:?}"),
        };
        let m = input_error(model.run_into(&[], &mut [&mut y]));
        assert!(m.contains("has 1 input (x), but 0 were given"), "{m}");
        let m = input_error(model.run_into(&[&x, &x], &mut [&mut y]));
        assert!(m.contains("2 were given"), "{m}");
        let m = input_error(model.run_into(&[&x], &mut [&mut y[1..]]));
        assert!(
            m.contains("output `logits`") && m.contains("holds 9"),
            "{m}"
        );
        model.run_into(&[&x], &mut [&mut y]).unwrap();
    }

    #[test]
    fn the_interpreter_has_no_profile() {
        let model = convnext(Target::Interp);
        assert!(model.set_profiling(true).is_err());
        assert!(model.set_profiling(false).is_ok() && model.profile().is_empty());
        let cpu = convnext(Target::Cpu);
        cpu.set_profiling(true).unwrap();
        cpu.run(&[cpu.random_inputs(0)[0].view()]).unwrap();
        let profile = cpu.profile();
        assert!(!profile.is_empty() && profile.iter().all(|s| s.kind.is_some()));
        assert!(profile
            .iter()
            .all(|s| s.fastest.is_some_and(|f| f <= s.time)));
        assert_eq!(profile.len(), cpu.exec_stats().unwrap().steps());
    }
}
