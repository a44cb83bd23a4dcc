//! The CPU executable: an optimised Graph IR and its weights compiled once into a runtime
//! [`Plan`](bbc_runtime::exec::Plan) and run many times by the runtime's [`Executor`].
//!
//! [`compile`] splits the graph in two. Values computed from parameters alone (BatchNorm
//! folded into conv weights, reshaped layer scales, wavelet-folded filters) are evaluated
//! once, here, by the interpreter; every value that depends on a graph input becomes one
//! step per inference:
//!
//! - a loop kernel (elementwise chains, norms, pooling, resampling, ...) is JIT-compiled and
//!   split over the pool by its grid;
//! - a contraction runs on the runtime's kernels with its weight packed at load time: a
//!   convolution (im2col or 1x1) on [`Conv2d`], a matrix product on the tiled GEMM, a
//!   product of two activations on the GEMM over both buffers; its JIT'd epilogue runs on
//!   each finished tile. An output the product cannot be written to in place (a permuted
//!   one) is computed transposed when that makes it row-major without turning a row-major
//!   activation into a column-major operand, else scattered from scratch;
//! - a depthwise convolution (alone, or the one in a group such as depthwise conv +
//!   LayerNorm) runs on the runtime's direct depthwise kernel, which keeps taps in registers
//!   as the generated loop nest does not (several times faster on ConvNeXt and EfficientNet
//!   blocks) and adds the bias itself. The rest of its group is JIT-compiled: when it only
//!   normalises each pixel over channels (ConvNeXt's LayerNorm, in either layout) it runs in
//!   the same step on each finished band of output rows while the band is in cache, the
//!   convolution's result never reaching the arena; otherwise it is a second step reading
//!   that result;
//! - a node with no kernel (a group the Kernel IR cannot express yet, or a contraction form
//!   the runtime has no kernel for) runs as host code: the op table's reference
//!   implementation, the interpreter on the group's body, or, for a transposed convolution,
//!   the runtime's product-and-col2im routine on one thread. Every such node is recorded in
//!   [`ExecStats::fallbacks`] with the reason.
//!
//! The lowering (`build`) is shared with ahead-of-time compilation
//! ([`super::object`]): it produces the plan as data, a [`PlanDesc`] (kernels by function
//! index, weights by constant index, everything else plain shapes and offsets), and hands
//! each distinct kernel, each constant and each finished step to a `Backend`. The JIT's
//! backend compiles kernels into memory and resolves every step as soon as it is built
//! ([`desc::resolve_step`]: weights packed while they are in memory); the object writer
//! emits the kernels into an object file and keeps the constants for its weights file.
//!
//! The executor places the per-inference values in one arena by liveness. Compile time is
//! recorded per stage ([`CompileTimes`]). In bounds-checked codegen mode
//! ([`Options::bounds_checked`]) every run ends by checking each kernel's violation record.

use super::in_place::concats_in_place;
use super::native_epilogue::{elementwise_activation, native_epilogue};
use super::{compile as jit, CompiledKernel, Entry, Options, RunError};
use crate::codegen::prepare::Preparer;
use crate::interp::{self, InterpError};
use crate::ir::{Graph, Node, NodeKind, ValueId};
use crate::kernel::{
    lower_node, Body, BufId, Contraction, ConvGeometry, Expr, Kernel, LowerError, Operand,
    ProductLayout, Stmt,
};
use crate::ops::pool::{Pool, Resize};
use crate::ops::AttrsExt;
use crate::passes::input_dependent;
use bbc_runtime::arena::AlignedBuffer;
use bbc_runtime::desc::{
    self, Code, ConstantDesc, ConvDesc, DepthwiseDesc, Described, FunctionKind, IoDesc, MatrixView,
    PackedDesc, PlanDesc,
};
use bbc_runtime::exec::{
    self, BandLoop, ChannelNorm, Executor, Gemm, GemmOperand, HostFn, NativeEpilogue, ProductMap,
    Scatter, Slot, Step, StepKernel, StepTimes, TileEpilogue, View,
};
use bbc_runtime::kernels::activation::Activation;
use bbc_runtime::kernels::{
    AxisMap, Conv2d, Conv2dShape, ConvTranspose2dShape, DepthwiseConv2d, Layout, MatRef, MaxPool2d,
    Resize2d,
};
use bbc_runtime::pool::ThreadPool;
use bbc_runtime::Tensor;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

/// How to build an [`Executable`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecOptions {
    /// Threads of the pool, the caller included; 0 means all cores.
    pub threads: usize,
    pub codegen: Options,
}

/// Wall time of each compilation stage.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CompileTimes {
    /// Graph IR to Kernel IR.
    pub lowering: Duration,
    /// Cranelift code generation on the compiling thread, and the time it waited at the end
    /// for the loop kernels its helper threads compiled (a wait for one that a step packing
    /// weights needs at once counts in `weights`).
    pub jit: Duration,
    /// Evaluating the values computed from parameters alone (folded BatchNorm, weight
    /// slices, ...) once.
    pub prepare: Duration,
    /// Packing weights into the layouts the convolution and GEMM kernels read.
    pub weights: Duration,
    /// Liveness, arena placement and pointer resolution.
    pub planning: Duration,
}

impl CompileTimes {
    /// `(stage, time)` in pipeline order.
    pub fn stages(&self) -> [(&'static str, Duration); 5] {
        [
            ("lowering", self.lowering),
            ("jit", self.jit),
            ("prepare", self.prepare),
            ("weights", self.weights),
            ("planning", self.planning),
        ]
    }

    pub fn total(&self) -> Duration {
        self.stages().iter().map(|(_, t)| *t).sum()
    }
}

/// A node that runs its reference implementation instead of a kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fallback {
    pub node: String,
    /// The op name, or `fused KIND` for a group.
    pub op: String,
    pub reason: String,
}

/// What an executable is made of.
#[derive(Clone, Debug, Default)]
pub struct ExecStats {
    pub times: CompileTimes,
    /// Steps per inference, by kind.
    pub loop_kernels: usize,
    pub conv_kernels: usize,
    pub gemm_kernels: usize,
    /// Max poolings and resizes (`upsample`) on the runtime's kernels.
    pub pool_kernels: usize,
    /// Channel normalisations of their own (`layer_norm2d`) and last-axis softmaxes on the
    /// runtime's kernels.
    pub norm_kernels: usize,
    pub fallbacks: Vec<Fallback>,
    /// Groups whose depthwise convolution runs on the runtime's kernel and the rest of the
    /// group as a second step (each counted in `conv_kernels` and `loop_kernels`).
    pub split_groups: usize,
    /// Groups whose depthwise convolution runs on the runtime's kernel with the rest of the
    /// group applied to each finished band of pixels in the same step (counted in
    /// `conv_kernels`).
    pub band_groups: usize,
    /// Values computed from the weights once at load time.
    pub prepared_values: usize,
    /// Bytes of machine code generated.
    pub code_bytes: usize,
    /// Kernels and epilogues that run the code of an identical one instead of their own.
    pub reused_kernels: usize,
    /// Epilogues run by the runtime's kernels instead of generated code: a contraction's or
    /// a depthwise convolution's bias + common activation, a depthwise group's channel norm.
    pub native_epilogues: usize,
    /// Contractions whose product goes to scratch and is scattered into a permuted output
    /// tile by tile (counted in `conv_kernels` or `gemm_kernels`).
    pub scattered_products: usize,
    /// Concatenations that need no step: the steps computing their operands write them in
    /// place.
    pub concats_in_place: usize,
    pub arena_bytes: usize,
    /// No arena placement can be smaller than this (the most bytes live at once).
    pub arena_lower_bound: usize,
    pub scratch_bytes: usize,
    /// Constant buffers kept for the kernels (weights read directly, not packed).
    pub constant_bytes: usize,
    /// Weights packed (and transformed) for the kernels at load time, held by the steps.
    pub packed_weight_bytes: usize,
    /// Fresh memory the compile faulted in for its large buffers (packed weights, the
    /// arena), and the time that took, within the weights and planning stages.
    pub faulted: bbc_runtime::arena::Faulted,
    pub threads: usize,
}

impl ExecStats {
    /// Kernel launches per inference.
    pub fn steps(&self) -> usize {
        self.loop_kernels
            + self.conv_kernels
            + self.gemm_kernels
            + self.pool_kernels
            + self.norm_kernels
            + self.fallbacks.len()
    }
}

/// Why a graph could not be compiled.
#[derive(Debug)]
pub enum CompileError {
    /// A weight is missing or mis-shaped, so the parameter-only values cannot be prepared.
    Weights(InterpError),
    /// The runtime refused the plan or could not start its threads.
    Runtime(String),
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CompileError::Weights(e) => write!(f, "{e}"),
            CompileError::Runtime(e) => write!(f, "cannot set up the executable: {e}"),
        }
    }
}

impl std::error::Error for CompileError {}

/// Why an inference failed.
#[derive(Debug)]
pub enum ExecError {
    /// Inputs missing, extra or mis-shaped.
    Inputs(String),
    Runtime(exec::ExecError),
    /// Bounds-checked code caught an access outside a buffer.
    OutOfBounds {
        kernel: String,
        error: RunError,
    },
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecError::Inputs(e) => f.write_str(e),
            ExecError::Runtime(e) => write!(f, "{e}"),
            ExecError::OutOfBounds { kernel, error } => write!(f, "kernel `{kernel}`: {error}"),
        }
    }
}

impl std::error::Error for ExecError {}

/// A compiled model: compile once, run many times.
pub struct Executable {
    // Declared first so it is dropped before the code its steps point into.
    exec: Executor,
    kernels: Vec<CompiledKernel>,
    inputs: Vec<(String, Vec<usize>)>,
    outputs: Vec<(String, Vec<usize>)>,
    stats: ExecStats,
}

/// Compiles `graph` (normally optimised at `-O2`) with `weights` (by state_dict key).
pub fn compile(
    graph: &Graph,
    weights: &BTreeMap<String, Tensor>,
    opts: &ExecOptions,
) -> Result<Executable, CompileError> {
    let faulted = bbc_runtime::arena::faulted_on_this_thread();
    let pool = ThreadPool::new(opts.threads).map_err(|e| CompileError::Runtime(e.to_string()))?;
    let mut jit = JitBackend {
        codegen: opts.codegen,
        threads: pool.threads(),
        kernels: Vec::new(),
        code: Vec::new(),
        constants: Vec::new(),
        hosts: Vec::new(),
        steps: Vec::new(),
        helpers: None,
        deferred: Vec::new(),
        queued_code_bytes: 0,
        waited: Duration::ZERO,
    };
    let helpers = pool.threads().saturating_sub(1).min(MAX_JIT_HELPERS);
    let (desc, mut stats) = std::thread::scope(|scope| {
        if helpers > 0 {
            jit.helpers = Some(JitHelpers::spawn(scope, helpers, opts.codegen));
        }
        // A panic while building must not leave the helpers waiting for jobs: the scope
        // would wait for them forever. Their job sender is dropped before it goes on.
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            build(graph, weights, &opts.codegen, &mut jit)
        }));
        let built = match built {
            Ok(built) => built,
            Err(panic) => {
                jit.helpers = None;
                std::panic::resume_unwind(panic)
            }
        };
        let finished = match &built {
            Ok((desc, _)) => jit.finish(&desc.steps),
            Err(_) => {
                // The helpers get no more work and end when theirs is done.
                jit.helpers = None;
                Ok(())
            }
        };
        let (desc, stats) = built?;
        finished.map_err(CompileError::Runtime)?;
        Ok::<_, CompileError>((desc, stats))
    })?;
    stats.times.jit += jit.waited;
    stats.code_bytes += jit.queued_code_bytes;
    stats.threads = pool.threads();
    let started = Instant::now();
    let unresolved = || CompileError::Runtime("a step's kernel was never compiled".into());
    let steps = jit.steps.into_iter().map(|s| s.ok_or_else(unresolved));
    let steps = steps.collect::<Result<Vec<_>, _>>()?;
    let kernels = jit.kernels.into_iter().map(|k| k.ok_or_else(unresolved));
    let kernels = kernels.collect::<Result<Vec<_>, _>>()?;
    let plan = desc.assemble(steps, jit.constants);
    let exec = Executor::new(plan, pool).map_err(|e| CompileError::Runtime(e.to_string()))?;
    stats.times.planning += started.elapsed();
    stats.arena_bytes = exec.arena_bytes();
    stats.arena_lower_bound = exec.arena_lower_bound();
    stats.scratch_bytes = exec.scratch_bytes();
    stats.constant_bytes = exec.constant_bytes();
    stats.packed_weight_bytes = exec.packed_weight_bytes();
    stats.faulted = bbc_runtime::arena::faulted_on_this_thread().since(faulted);
    let named = |io: &IoDesc| (io.name.clone(), io.shape.clone());
    Ok(Executable {
        exec,
        kernels,
        inputs: desc.inputs.iter().map(named).collect(),
        outputs: desc.outputs.iter().map(named).collect(),
        stats,
    })
}

/// Lowers `graph` (with `weights` by state_dict key) to the description of its plan, once,
/// for any backend: `backend` generates each distinct kernel, receives each constant and
/// each finished step. Returns the description and what it is made of (times and counts;
/// the arena and thread figures are the caller's to fill).
pub(crate) fn build(
    graph: &Graph,
    weights: &BTreeMap<String, Tensor>,
    codegen: &Options,
    backend: &mut dyn Backend,
) -> Result<(PlanDesc, ExecStats), CompileError> {
    let dependent = input_dependent(graph);
    let started = Instant::now();
    let prepared = Preparer::new(graph, &dependent, weights);
    let mut b = Builder {
        graph,
        codegen,
        dependent: &dependent,
        stats: ExecStats {
            times: CompileTimes {
                prepare: started.elapsed(),
                ..CompileTimes::default()
            },
            ..ExecStats::default()
        },
        prepared,
        values: HashMap::new(),
        desc: PlanDesc::new(&graph.name),
        constant_ids: Vec::new(),
        constant_of: HashMap::new(),
        in_place: Vec::new(),
        compiled: Vec::new(),
        backend,
    };
    for &i in &graph.inputs {
        let io = IoDesc {
            name: graph.node(i).name.clone(),
            shape: graph.node(i).shape.clone(),
            slot: Slot::Value(b.value(i)),
        };
        b.desc.inputs.push(io);
    }
    let in_place = concats_in_place(graph, &dependent);
    for id in graph.topo_order() {
        let computed = matches!(
            graph.node(id).kind,
            NodeKind::Op { .. } | NodeKind::Fused { .. }
        );
        if in_place.elided.contains(&id) {
            // Its operands' steps write it.
            b.value(id);
            b.stats.concats_in_place += 1;
        } else if computed && dependent.contains(&id) {
            // Parameter-only operands are evaluated just before the node that reads them
            // and freed after the last one, so folded weights are never all alive at once.
            b.prepare(&graph.inputs(id))?;
            b.step(id)?;
            b.prepared.done_with(id);
        }
    }
    for &(value, base, offset) in &in_place.placed {
        let view = View {
            value: b.value(value),
            base: b.value(base),
            offset,
        };
        b.desc.views.push(view);
    }
    let outputs: Vec<ValueId> = graph.outputs.iter().map(|o| o.value).collect();
    b.prepare(&outputs)?;
    for o in &graph.outputs {
        let io = IoDesc {
            name: o.name.clone(),
            shape: graph.node(o.value).shape.clone(),
            slot: b.operand_slot(o.value),
        };
        b.desc.outputs.push(io);
    }
    b.stats.prepared_values = b.prepared.prepared();
    Ok((b.desc, b.stats))
}

/// Where the plan builder's code, constants and steps go. The JIT compiles each kernel and
/// resolves each step at once (packing its weights while they are in memory); an object
/// writer emits the code into one object file and keeps the constants for the weights file.
pub(crate) trait Backend {
    /// Generates `kernel` (a loop kernel, or a contraction with an epilogue) as the next
    /// function of the table (loop kernels as [`FunctionKind::Loop`], epilogues as
    /// [`FunctionKind::Tile`]); returns the size of its machine code.
    fn function(&mut self, kernel: &Kernel) -> Result<usize, String>;
    /// Constant `index` (numbered in order of first use) holds `data`; `in_place` when a
    /// slot reads it as is, not only a kernel that packs it. Called again, with `in_place`,
    /// when a packed constant is later read in place.
    fn constant(&mut self, index: usize, data: &[f32], in_place: bool);
    /// Host code a step runs; returns its index for [`StepKernel::Host`].
    fn host(&mut self, f: HostFn) -> usize;
    /// A finished step; `constant(index)` is the data of a constant it packs.
    fn step<'d>(
        &mut self,
        step: &Step<Described>,
        constant: &dyn Fn(usize) -> Option<&'d [f32]>,
    ) -> Result<(), String>;
}

/// Helper threads that compile loop kernels while the plan builder goes on.
const MAX_JIT_HELPERS: usize = 3;

/// The JIT: each kernel compiled into memory, each step resolved as it comes. With more
/// than one thread, loop kernels are compiled on helper threads ([`JitHelpers`]) while the
/// builder lowers the next nodes and packs their weights, and a step that runs one is
/// resolved once it is compiled: at the end ([`JitBackend::finish`]) or, where the step
/// also packs weights that are only in memory now, by waiting for it. Contraction
/// epilogues, small and needed at once, are compiled in place. On 2 threads DenseNet-169's
/// compile went from 286-347 to 172-199 ms, the loop kernels of its concatenations being
/// most of its code.
struct JitBackend {
    codegen: Options,
    threads: usize,
    /// The compiled kernels, in function-table order (`None` while a helper compiles one).
    kernels: Vec<Option<CompiledKernel>>,
    code: Vec<Option<Code>>,
    /// Copies of the constants read in place; empty for those only packed.
    constants: Vec<AlignedBuffer>,
    hosts: Vec<Option<HostFn>>,
    /// In plan order; `None` for the deferred ones until [`JitBackend::finish`].
    steps: Vec<Option<Step>>,
    helpers: Option<JitHelpers>,
    /// Loop steps whose kernel was not compiled yet, by their index in `steps` (the same
    /// as in the description's steps).
    deferred: Vec<usize>,
    /// Machine code of the kernels queued for the helpers (wherever compiled), in bytes.
    queued_code_bytes: usize,
    /// Time the builder waited for the helpers at the end.
    waited: Duration,
}

/// A loop kernel to compile, by function index.
type JitJob = (usize, Kernel);

/// The channels to and from the helper threads.
struct JitHelpers {
    /// `None` once no more jobs come ([`JitBackend::finish`]).
    jobs: Option<std::sync::mpsc::Sender<JitJob>>,
    /// The jobs not taken yet, shared by the helpers (and the builder once it is done).
    queue: std::sync::Arc<std::sync::Mutex<std::sync::mpsc::Receiver<JitJob>>>,
    done: std::sync::mpsc::Receiver<(usize, Result<CompiledKernel, String>)>,
}

impl JitHelpers {
    /// Starts `count` helper threads in `scope`, compiling with `codegen`; they end when
    /// the [`JitHelpers`] is dropped and the jobs sent before are done.
    fn spawn<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        count: usize,
        codegen: Options,
    ) -> JitHelpers {
        let (jobs, queue) = std::sync::mpsc::channel::<JitJob>();
        let (finished, done) = std::sync::mpsc::channel();
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        for _ in 0..count {
            let (queue, finished) = (queue.clone(), finished.clone());
            scope.spawn(move || loop {
                let job = lock(&queue).recv();
                let Ok((index, kernel)) = job else { return };
                let compiled = jit(&kernel, &codegen).map_err(|e| e.to_string());
                if finished.send((index, compiled)).is_err() {
                    return;
                }
            });
        }
        JitHelpers {
            jobs: Some(jobs),
            queue,
            done,
        }
    }
}

/// The job queue, held by a helper while it takes or waits for a job; a poisoned one
/// still hands them out.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl JitBackend {
    /// Installs compiled function `index`; returns its machine code size.
    fn install(&mut self, index: usize, compiled: CompiledKernel) -> Result<usize, String> {
        let code = match compiled.entry {
            Entry::Loops(f) => Code::Loop(f),
            Entry::Contraction(Some(f)) => Code::Tile(f),
            Entry::Contraction(None) => return Err("a contraction without an epilogue".into()),
        };
        let size = compiled.code_size;
        self.code[index] = Some(code);
        self.kernels[index] = Some(compiled);
        Ok(size)
    }

    /// Compiles one kernel still queued for the helpers on this thread; false when none is.
    fn compile_queued(&mut self) -> Result<bool, String> {
        let Some(helpers) = &self.helpers else {
            return Ok(false);
        };
        // A helper holds the lock while it waits for a job, so a lock that is taken means
        // an empty queue (or one a helper is taking a job from): never block on it here.
        let job = match helpers.queue.try_lock() {
            Ok(queue) => queue.try_recv().ok(),
            Err(std::sync::TryLockError::Poisoned(queue)) => queue.into_inner().try_recv().ok(),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        let Some((index, kernel)) = job else {
            return Ok(false);
        };
        let compiled = jit(&kernel, &self.codegen).map_err(|e| e.to_string())?;
        self.queued_code_bytes += self.install(index, compiled)?;
        Ok(true)
    }

    /// Takes one kernel a helper compiled, waiting for it.
    fn receive(&mut self) -> Result<(), String> {
        let helpers = self
            .helpers
            .as_ref()
            .ok_or("a loop kernel was never compiled")?;
        let (index, compiled) = helpers
            .done
            .recv()
            .map_err(|_| "the JIT's helper threads ended early".to_string())?;
        self.queued_code_bytes += self.install(index, compiled?)?;
        Ok(())
    }

    /// Returns once every function in `wanted` is compiled: the queue is first-in
    /// first-out, so the builder compiles the kernels queued (before and including the
    /// wanted ones) itself rather than wait for a helper to reach them.
    fn wait_for(&mut self, wanted: &[usize]) -> Result<(), String> {
        while wanted.iter().any(|&i| self.code[i].is_none()) {
            if !self.compile_queued()? {
                self.receive()?;
            }
        }
        Ok(())
    }

    /// Stops the helpers, takes the kernels they compiled (compiling those still queued
    /// here, beside them) and resolves the deferred steps (`described`: the plan's steps,
    /// in the order they were handed over).
    fn finish(&mut self, described: &[Step<Described>]) -> Result<(), String> {
        let Some(helpers) = &mut self.helpers else {
            return Ok(());
        };
        let started = Instant::now();
        // No more jobs: the helpers end once the queue is empty.
        helpers.jobs = None;
        while self.compile_queued()? {}
        while self.code.iter().any(Option::is_none) {
            self.receive()?;
        }
        self.helpers = None;
        self.waited += started.elapsed();
        for at in std::mem::take(&mut self.deferred) {
            let step = described
                .get(at)
                .ok_or("a deferred step is not in the plan")?;
            self.steps[at] = Some(self.resolve(step, &|_| None)?);
        }
        Ok(())
    }

    fn resolve<'d>(
        &mut self,
        step: &Step<Described>,
        constant: &dyn Fn(usize) -> Option<&'d [f32]>,
    ) -> Result<Step, String> {
        let code = &self.code;
        let function = |i: usize| code.get(i).copied().flatten();
        let hosts = &mut self.hosts;
        let mut host = |i: usize| hosts.get_mut(i).and_then(Option::take);
        desc::resolve_step(step, constant, &function, &mut host, self.threads)
            .map_err(|e| e.to_string())
    }
}

/// The loop kernels `step` runs, by function index.
fn loop_entries(step: &Step<Described>) -> Vec<usize> {
    match &step.kernel {
        StepKernel::Loops { entry, .. } => vec![*entry],
        StepKernel::Depthwise { rest, .. } => rest.iter().map(|r| r.entry).collect(),
        _ => Vec::new(),
    }
}

impl Backend for JitBackend {
    fn function(&mut self, kernel: &Kernel) -> Result<usize, String> {
        let index = self.code.len();
        self.code.push(None);
        self.kernels.push(None);
        let jobs = self.helpers.as_ref().and_then(|h| h.jobs.as_ref());
        if let (Some(jobs), Body::Loops { .. }) = (jobs, &kernel.body) {
            jobs.send((index, kernel.clone()))
                .map_err(|_| "the JIT's helper threads ended early".to_string())?;
            return Ok(0);
        }
        let compiled = jit(kernel, &self.codegen).map_err(|e| e.to_string())?;
        self.install(index, compiled)
    }

    fn constant(&mut self, index: usize, data: &[f32], in_place: bool) {
        if self.constants.len() <= index {
            self.constants
                .resize_with(index + 1, || AlignedBuffer::zeroed(0));
        }
        if in_place && self.constants[index].is_empty() {
            self.constants[index] = AlignedBuffer::from_slice(data);
        }
    }

    fn host(&mut self, f: HostFn) -> usize {
        self.hosts.push(Some(f));
        self.hosts.len() - 1
    }

    fn step<'d>(
        &mut self,
        step: &Step<Described>,
        constant: &dyn Fn(usize) -> Option<&'d [f32]>,
    ) -> Result<(), String> {
        let pending: Vec<usize> = loop_entries(step)
            .into_iter()
            .filter(|&i| self.code.get(i).is_some_and(Option::is_none))
            .collect();
        if !pending.is_empty() {
            if matches!(step.kernel, StepKernel::Loops { .. }) {
                // A loop step reads no constant through `constant`: it can wait.
                self.deferred.push(self.steps.len());
                self.steps.push(None);
                return Ok(());
            }
            self.wait_for(&pending)?;
        }
        let resolved = self.resolve(step, constant)?;
        self.steps.push(Some(resolved));
        Ok(())
    }
}

impl Executable {
    /// The graph inputs `(name, shape)` in [`Executable::run_into`] order.
    pub fn inputs(&self) -> &[(String, Vec<usize>)] {
        &self.inputs
    }

    /// The graph outputs `(name, shape)` in [`Executable::run_into`] order.
    pub fn outputs(&self) -> &[(String, Vec<usize>)] {
        &self.outputs
    }

    pub fn stats(&self) -> &ExecStats {
        &self.stats
    }

    /// Runs one inference on named inputs; returns the outputs by name.
    pub fn run(
        &mut self,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, ExecError> {
        if let Some(extra) = inputs
            .keys()
            .find(|k| !self.inputs.iter().any(|(n, _)| n == *k))
        {
            return Err(ExecError::Inputs(format!(
                "the model has no input `{extra}`"
            )));
        }
        let mut data = Vec::with_capacity(self.inputs.len());
        for (name, shape) in &self.inputs {
            let t = inputs
                .get(name)
                .ok_or_else(|| ExecError::Inputs(format!("no value given for input `{name}`")))?;
            if t.shape() != shape.as_slice() {
                return Err(ExecError::Inputs(format!(
                    "input `{name}` has shape {:?}, the model expects {shape:?}",
                    t.shape()
                )));
            }
            data.push(t.as_standard_layout());
        }
        let ins: Vec<&[f32]> = data
            .iter()
            .map(|t| t.as_slice().expect("standard layout"))
            .collect();
        let mut outs: Vec<Vec<f32>> = self
            .outputs
            .iter()
            .map(|(_, s)| vec![0.0; s.iter().product()])
            .collect();
        let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
        self.run_into(&ins, &mut views)?;
        Ok(self
            .outputs
            .iter()
            .zip(outs)
            .map(|((name, shape), v)| {
                let t = Tensor::from_shape_vec(shape.as_slice(), v).expect("sized from the shape");
                (name.clone(), t)
            })
            .collect())
    }

    /// Runs one inference on row-major buffers in [`Executable::inputs`] order, writing the
    /// outputs in [`Executable::outputs`] order; allocates nothing but what the GEMM library
    /// and fallback nodes do.
    pub fn run_into(
        &mut self,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), ExecError> {
        let result = self.exec.run(inputs, outputs).map_err(ExecError::Runtime);
        // Bounds-checked code records violations instead of performing them; report the
        // first (and clear every record) even when the run failed for another reason.
        let mut violation = None;
        for k in &self.kernels {
            if let Err(error) = k.take_violation() {
                violation.get_or_insert(ExecError::OutOfBounds {
                    kernel: k.kernel.name.clone(),
                    error,
                });
            }
        }
        match violation {
            Some(v) => Err(v),
            None => result,
        }
    }

    /// Records per-step wall times from now on ([`Executable::profile`]).
    pub fn set_profiling(&mut self, on: bool) {
        self.exec.set_profiling(on);
    }

    /// `(step, kind, times)` over the runs since profiling was turned on, slowest in total
    /// first; empty when profiling is off.
    pub fn profile(&self) -> Vec<(String, &'static str, StepTimes)> {
        let Some(times) = self.exec.step_times() else {
            return Vec::new();
        };
        let mut rows: Vec<_> = self
            .exec
            .steps()
            .iter()
            .zip(times)
            .map(|(s, &t)| (s.name.clone(), kind_name(&s.kernel), t))
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.2.total));
        rows
    }
}

fn kind_name(k: &StepKernel) -> &'static str {
    match k {
        StepKernel::Loops { .. } => "loops",
        StepKernel::Conv { .. } | StepKernel::ConvTranspose { .. } => "conv",
        StepKernel::Depthwise { .. } => "depthwise",
        StepKernel::Gemm(_) => "gemm",
        StepKernel::Norm { .. } | StepKernel::Softmax { .. } => "norm",
        StepKernel::MaxPool { .. } => "pool",
        StepKernel::Resize { .. } => "resize",
        StepKernel::Host(_) => "reference",
    }
}

/// The state of one lowering.
struct Builder<'g, 'b> {
    graph: &'g Graph,
    codegen: &'g Options,
    dependent: &'g HashSet<ValueId>,
    stats: ExecStats,
    /// Parameter-only values, evaluated on demand.
    prepared: Preparer<'g>,
    /// Arena value of each per-inference node.
    values: HashMap<ValueId, usize>,
    desc: PlanDesc,
    /// The value each constant holds.
    constant_ids: Vec<ValueId>,
    constant_of: HashMap<ValueId, usize>,
    /// Whether the backend has been told each constant is read in place.
    in_place: Vec<bool>,
    /// Each generated kernel without its names ([`unnamed`]), with its function index.
    compiled: Vec<(Kernel, usize)>,
    backend: &'b mut dyn Backend,
}

/// A described contraction step and the kernel buffers it reads besides its epilogue's.
type Mapped = (StepKernel<Described>, Vec<BufId>);

impl Builder<'_, '_> {
    /// The arena value of per-inference node `id`.
    fn value(&mut self, id: ValueId) -> usize {
        if let Some(&v) = self.values.get(&id) {
            return v;
        }
        let v = self.temp_value(self.graph.node(id).numel());
        self.values.insert(id, v);
        v
    }

    /// An arena value for an intermediate result inside a node.
    fn temp_value(&mut self, len: usize) -> usize {
        self.desc.values.push(len);
        self.desc.values.len() - 1
    }

    /// The constant holding parameter-only value `id` (prepared), read in place by a slot or
    /// only packed by a kernel.
    fn constant(&mut self, id: ValueId, in_place: bool) -> usize {
        let data = self
            .prepared
            .get(id)
            .expect("every operand of a per-inference node is prepared before it is built");
        let c = match self.constant_of.get(&id) {
            Some(&c) if !in_place || self.in_place[c] => return c,
            Some(&c) => c,
            None => {
                self.desc.constants.push(ConstantDesc {
                    name: self.graph.node(id).name.clone(),
                    len: data.len(),
                });
                self.constant_ids.push(id);
                self.in_place.push(false);
                self.constant_of.insert(id, self.constant_ids.len() - 1);
                self.constant_ids.len() - 1
            }
        };
        self.in_place[c] |= in_place;
        self.backend.constant(c, data, in_place);
        c
    }

    /// The slot an operand is read from: its arena value, or its prepared constant.
    fn operand_slot(&mut self, id: ValueId) -> Slot {
        if self.dependent.contains(&id) {
            Slot::Value(self.value(id))
        } else {
            Slot::Constant(self.constant(id, true))
        }
    }

    /// Evaluates the parameter-only values among `ids`.
    fn prepare(&mut self, ids: &[ValueId]) -> Result<(), CompileError> {
        let started = Instant::now();
        for &id in ids {
            if !self.dependent.contains(&id) {
                self.prepared.prepare(id).map_err(CompileError::Weights)?;
            }
        }
        self.stats.times.prepare += started.elapsed();
        Ok(())
    }

    /// Prepared data of an operand that is not computed per inference.
    fn constant_data(&self, id: ValueId) -> Option<&[f32]> {
        self.prepared.get(id)
    }

    /// The function computing `kernel`: a new one, or the code of an identical kernel
    /// generated before: the same Kernel IR up to the names of the kernel and of its
    /// buffers, tables and scratch arrays, which the generated code does not depend on (a
    /// model's stages repeat identical blocks: ConvNeXt-T's JIT time went from about 31 to
    /// 13 ms). Bounds-checked code records violations per compiled kernel, so there every
    /// kernel is compiled on its own and reports its own name.
    fn function(&mut self, kernel: &Kernel) -> Result<usize, String> {
        let started = Instant::now();
        let unnamed = unnamed(kernel);
        let shared = !self.codegen.bounds_checked;
        if let Some(&(_, f)) = self.compiled.iter().find(|(k, _)| shared && *k == unnamed) {
            self.stats.reused_kernels += 1;
            self.stats.times.jit += started.elapsed();
            return Ok(f);
        }
        let generated = self.backend.function(kernel);
        self.stats.times.jit += started.elapsed();
        self.stats.code_bytes += generated?;
        self.desc.functions.push(match kernel.body {
            Body::Loops { .. } => FunctionKind::Loop,
            Body::Contraction(_) => FunctionKind::Tile,
        });
        let f = self.desc.functions.len() - 1;
        self.compiled.push((unnamed, f));
        Ok(f)
    }

    /// Hands a finished step to the backend (the JIT packs its weights now) and records it.
    fn push(&mut self, step: Step<Described>) -> Result<(), CompileError> {
        let started = Instant::now();
        let (prepared, ids) = (&self.prepared, &self.constant_ids);
        let data = |c: usize| ids.get(c).and_then(|&id| prepared.get(id));
        self.backend
            .step(&step, &data)
            .map_err(CompileError::Runtime)?;
        self.stats.times.weights += started.elapsed();
        self.desc.steps.push(step);
        Ok(())
    }

    /// Adds a step computing node `id` from its first operand (slot 0) with `kernel`.
    fn push_unary(
        &mut self,
        id: ValueId,
        kernel: StepKernel<Described>,
    ) -> Result<(), CompileError> {
        let slots = vec![
            self.operand_slot(self.graph.inputs(id)[0]),
            Slot::Value(self.value(id)),
        ];
        self.push(Step {
            name: self.graph.node(id).name.clone(),
            slots,
            kernel,
        })
    }

    /// Adds the step computing node `id`.
    fn step(&mut self, id: ValueId) -> Result<(), CompileError> {
        // An empty value needs no step (the runtime takes it as written): the kernels size
        // their work by it, and some would divide by an empty extent.
        if self.graph.node(id).numel() == 0 {
            self.value(id);
            return Ok(());
        }
        if self.depthwise_steps(id)? {
            return Ok(());
        }
        if let Some((shape, norm)) = standalone_channel_norm(self.graph, id) {
            let inputs = self.graph.inputs(id);
            let mut slots: Vec<Slot> = inputs.iter().map(|&o| self.operand_slot(o)).collect();
            slots.push(Slot::Value(self.value(id)));
            self.stats.norm_kernels += 1;
            return self.push(Step {
                name: self.graph.node(id).name.clone(),
                slots,
                kernel: StepKernel::Norm {
                    input: 0,
                    shape,
                    norm,
                },
            });
        }
        if let Some((rows, len)) = last_axis_softmax(self.graph, id) {
            self.stats.norm_kernels += 1;
            let kernel = StepKernel::Softmax {
                input: 0,
                rows,
                len,
            };
            return self.push_unary(id, kernel);
        }
        if let Some(pool) = max_pool_shape(self.graph, id) {
            self.stats.pool_kernels += 1;
            return self.push_unary(id, StepKernel::MaxPool { pool, input: 0 });
        }
        if let Some(resize) = resize_shape(self.graph, id) {
            self.stats.pool_kernels += 1;
            return self.push_unary(id, StepKernel::Resize { resize, input: 0 });
        }
        let started = Instant::now();
        let lowered = lower_node(self.graph, id);
        self.stats.times.lowering += started.elapsed();
        let built = match lowered {
            Err(e) => Err(e.to_string()),
            Ok(kernel) => self.kernel_step(id, &kernel),
        };
        let operands = self.graph.inputs(id);
        let (kernel, used) = match built {
            Ok(k) => k,
            Err(reason) => {
                let node = self.graph.node(id);
                self.stats.fallbacks.push(Fallback {
                    node: node.name.clone(),
                    op: match &node.kind {
                        NodeKind::Fused { kind, .. } => format!("fused {kind}"),
                        _ => node.op().map_or("?", |op| op.name).to_string(),
                    },
                    reason,
                });
                let host = self.backend.host(reference_step(self.graph, id));
                (StepKernel::Host(host), (0..operands.len()).collect())
            }
        };
        let mut slots = self.read_slots(&operands, |i| used.contains(&i));
        slots.push(Slot::Value(self.value(id)));
        self.push(Step {
            name: self.graph.node(id).name.clone(),
            slots,
            kernel,
        })
    }

    /// The slots of a step's operands: each one `read` says the step reads, the others
    /// [`Slot::Unused`].
    fn read_slots(&mut self, operands: &[ValueId], read: impl Fn(usize) -> bool) -> Vec<Slot> {
        operands
            .iter()
            .enumerate()
            .map(|(i, &o)| {
                if read(i) {
                    self.operand_slot(o)
                } else {
                    Slot::Unused
                }
            })
            .collect()
    }

    /// The runtime's description of a depthwise convolution of `shape` over its weight and
    /// optional bias (`conv_inputs[1..]`).
    fn depthwise_desc(&mut self, shape: Conv2dShape, conv_inputs: &[ValueId]) -> DepthwiseDesc {
        DepthwiseDesc {
            shape,
            weight: self.constant(conv_inputs[1], false),
            bias: conv_inputs.get(2).map(|&b| self.constant(b, false)),
        }
    }

    /// Runs a depthwise convolution with constant weights (alone, or the one in a group
    /// reading only the group's inputs) on the runtime's direct kernel, its bias added in the
    /// kernel, and the rest of its group as a generated loop kernel: in the same step on
    /// each finished band of pixels when [`band_rest`] allows, else as a second step reading
    /// the convolution's result. Returns whether it did (nothing is added otherwise).
    fn depthwise_steps(&mut self, id: ValueId) -> Result<bool, CompileError> {
        let Some((g, conv, positions)) = find_depthwise(self.graph, id) else {
            return Ok(false);
        };
        let Some(shape) = depthwise_shape(g, conv) else {
            return Ok(false);
        };
        let operands = self.graph.inputs(id);
        let conv_inputs: Vec<ValueId> = positions.iter().map(|&p| operands[p]).collect();
        let Some(weight_len) = self.constant_data(conv_inputs[1]).map(<[f32]>::len) else {
            return Ok(false);
        };
        let bias_len = match conv_inputs.get(2) {
            Some(&b) => match self.constant_data(b) {
                Some(data) => Some(data.len()),
                None => return Ok(false),
            },
            None => None,
        };
        let out_hw = match g.node(conv).shape.as_slice() {
            [.., h, w] => [*h, *w],
            _ => return Ok(false),
        };
        if !DepthwiseConv2d::check(&shape, weight_len, bias_len).is_ok_and(|out| out == out_hw) {
            return Ok(false);
        }
        // A group that is the convolution and a `layer_norm2d` of it: the norm runs natively
        // on each finished band of the output.
        if let Some(norm) = channel_norm(g, conv) {
            let mut slots = self.read_slots(&operands, |i| {
                i == positions[0] || [norm.weight, norm.bias].contains(&Some(i))
            });
            slots.push(Slot::Value(self.value(id)));
            let kernel = self.depthwise_desc(shape, &conv_inputs);
            self.push(Step {
                name: self.graph.node(id).name.clone(),
                slots,
                kernel: StepKernel::Depthwise {
                    conv: kernel,
                    input: positions[0],
                    rest: None,
                    activation: None,
                    norm: Some(norm),
                },
            })?;
            self.stats.conv_kernels += 1;
            self.stats.band_groups += 1;
            self.stats.native_epilogues += 1;
            return Ok(true);
        }
        // The rest of the group: nothing, one activation (run natively on each finished
        // tile), or generated loop code.
        let mut activation = None;
        let rest = match &self.graph.node(id).kind {
            NodeKind::Fused { body, .. } if body.outputs[0].value != conv => {
                let started = Instant::now();
                let lowered = rest_kernel(self.graph, id, conv);
                self.stats.times.lowering += started.elapsed();
                let Ok(k) = lowered else {
                    return Ok(false);
                };
                activation = elementwise_activation(&k);
                match &k.body {
                    _ if activation.is_some() => None,
                    Body::Loops { .. } => match self.function(&k) {
                        Ok(entry) => Some((entry, k.grid_extent(), loads(&k))),
                        Err(_) => return Ok(false),
                    },
                    Body::Contraction(_) => return Ok(false),
                }
            }
            _ => None,
        };
        let name = self.graph.node(id).name.clone();
        let x = self.operand_slot(conv_inputs[0]);
        let kernel = self.depthwise_desc(shape, &conv_inputs);
        let Some((entry, grid, reads)) = rest else {
            let slots = vec![x, Slot::Value(self.value(id))];
            self.push_depthwise(name, slots, kernel, activation)?;
            self.stats.native_epilogues += usize::from(activation.is_some());
            return Ok(true);
        };
        let rows = shape.batch * out_hw[0];
        let per_row = grid / rows.max(1);
        if band_rest(g, conv) && per_row > 0 && per_row * rows == grid {
            // The operands the rest reads and the convolution's input; the product in scratch.
            let mut slots = self.read_slots(&operands, |i| reads.contains(&i) || i == positions[0]);
            slots.extend([Slot::Product, Slot::Value(self.value(id))]);
            self.push(Step {
                name,
                slots,
                kernel: StepKernel::Depthwise {
                    conv: kernel,
                    input: positions[0],
                    rest: Some(BandLoop { entry, per_row }),
                    activation: None,
                    norm: None,
                },
            })?;
            self.stats.conv_kernels += 1;
            self.stats.band_groups += 1;
            return Ok(true);
        }
        let conv_value = self.temp_value(g.node(conv).numel());
        let conv_name = g.node(conv).name.clone();
        self.push_depthwise(conv_name, vec![x, Slot::Value(conv_value)], kernel, None)?;
        let mut slots: Vec<Slot> = operands.iter().map(|&o| self.operand_slot(o)).collect();
        slots.extend([Slot::Value(conv_value), Slot::Value(self.value(id))]);
        self.push(Step {
            name,
            slots,
            kernel: StepKernel::Loops { entry, grid },
        })?;
        self.stats.loop_kernels += 1;
        self.stats.split_groups += 1;
        Ok(true)
    }

    /// Adds a step computing depthwise convolution `conv` of slot 0 into the last slot,
    /// then `activation` on it.
    fn push_depthwise(
        &mut self,
        name: String,
        slots: Vec<Slot>,
        conv: DepthwiseDesc,
        activation: Option<Activation>,
    ) -> Result<(), CompileError> {
        self.push(Step {
            name,
            slots,
            kernel: StepKernel::Depthwise {
                conv,
                input: 0,
                rest: None,
                activation,
                norm: None,
            },
        })?;
        self.stats.conv_kernels += 1;
        Ok(())
    }

    /// The runtime kernel of a lowered node and the operand buffers it reads.
    fn kernel_step(&mut self, id: ValueId, kernel: &Kernel) -> Result<Mapped, String> {
        match &kernel.body {
            Body::Loops { .. } => {
                let entry = self.function(kernel)?;
                self.stats.loop_kernels += 1;
                let grid = kernel.grid_extent();
                Ok((
                    StepKernel::Loops { entry, grid },
                    (0..kernel.output()).collect(),
                ))
            }
            Body::Contraction(c) => {
                let operands = self.graph.inputs(id);
                let (mut step, mut used) = self.contraction_step(kernel, c, &operands)?;
                if c.epilogue.is_some() {
                    // Bias + a common activation runs on the runtime's 8-lane kernel; an
                    // epilogue that only stores the product where it already is (after a
                    // permuted product) needs nothing.
                    let epilogue = match native_epilogue(kernel, c, transposed_product(&step)) {
                        Some(NativeEpilogue {
                            activation: Activation::Identity,
                            bias: None,
                            residual: None,
                            ..
                        }) => None,
                        Some(native) => {
                            used.extend(native.bias.map(|b| b.slot));
                            used.extend(native.residual);
                            self.stats.native_epilogues += 1;
                            Some(TileEpilogue::Native(native))
                        }
                        None => {
                            used.extend(epilogue_reads(c));
                            Some(TileEpilogue::Generated(self.function(kernel)?))
                        }
                    };
                    set_epilogue(&mut step, epilogue);
                }
                let product = match &step {
                    StepKernel::Conv { product, .. }
                    | StepKernel::ConvTranspose { product, .. } => {
                        self.stats.conv_kernels += 1;
                        Some(product)
                    }
                    StepKernel::Gemm(g) => {
                        self.stats.gemm_kernels += 1;
                        Some(&g.product)
                    }
                    _ => None,
                };
                if product.is_some_and(|p| p.scatter.is_some()) {
                    self.stats.scattered_products += 1;
                }
                used.retain(|&b| b != kernel.output());
                Ok((step, used))
            }
        }
    }

    /// Maps a contraction to a runtime convolution or GEMM over constant weights (packed
    /// when the step is resolved).
    fn contraction_step(
        &mut self,
        kernel: &Kernel,
        c: &Contraction,
        operands: &[ValueId],
    ) -> Result<Mapped, String> {
        let ProductLayout::Dense {
            row_stride,
            col_stride,
        } = c.layout
        else {
            let (shape, weight, input) = transposed_conv_shape(kernel, c).ok_or(
                "a transposed convolution whose operands are not whole NCHW buffers has no \
                 planned kernel",
            )?;
            let product = ProductMap {
                rows_per_batch: shape.out_channels,
                transposed: false,
                bias: None,
                scatter: None,
                epilogue: None,
            };
            let step = StepKernel::ConvTranspose {
                shape,
                input,
                weight,
                product,
            };
            return Ok((step, vec![input, weight]));
        };
        let out_strides: Vec<usize> = c.batch.iter().map(|d| d.out_stride).collect();
        let out_offsets = batch_offsets(c, 0, &out_strides);
        // Row-major and contiguous across batch entries: the kernels' own output order.
        let contiguous = row_stride == c.n
            && col_stride == 1
            && out_offsets
                .iter()
                .enumerate()
                .all(|(b, &o)| o == b * c.m * c.n);
        let scatter = Scatter {
            batch_offsets: out_offsets.clone(),
            row_stride,
            col_stride,
        };
        // A convolution whose weight is computed per inference is left to the GEMM below.
        let conv = conv_shape(kernel, c).and_then(|(shape, w, x)| {
            let len = self.constant_data(operands[w])?.len();
            Some((shape, w, len, x))
        });
        if let Some((shape, w, len, input)) = conv {
            let out = Conv2d::check(&shape, len).map_err(|e| e.to_string())?;
            if out != conv_out_hw(&c.b) {
                return Err("the convolution kernel's output size differs".into());
            }
            let product = ProductMap {
                rows_per_batch: c.m,
                transposed: false,
                bias: None,
                scatter: (!contiguous).then_some(scatter),
                epilogue: None,
            };
            let weight = self.constant(operands[w], false);
            return Ok((
                StepKernel::Conv {
                    conv: ConvDesc { shape, weight },
                    input,
                    product,
                },
                vec![input],
            ));
        }
        let (Operand::Strided { .. }, Operand::Strided { .. }) = (&c.a, &c.b) else {
            return Err("an im2col operand without a constant convolution weight".into());
        };
        // The GEMM's epilogue sees a row-major tile: of `C`, or of `Cᵀ` when `C` is stored
        // column-major. Such a product is computed as `Cᵀ = Bᵀ·Aᵀ` row-major, or, when `B` is
        // a weight and `A` an activation with contiguous rows, as it stands and stored
        // transposed (the dense kernel's panels take `B` as it is, while `Aᵀ` as the right
        // operand would be repacked by every output tile). A product whose output is neither
        // is scattered from scratch. (With `gemm`'s AVX-512 kernels, which are not enabled,
        // ConvNeXt's fc2 storing back to NCHW ran at half fc1's speed as `Cᵀ = Bᵀ·Aᵀ`.)
        let a_row_major = match &c.a {
            Operand::Strided {
                buf, row_stride, ..
            } => *row_stride != 1 && self.constant_data(operands[*buf]).is_none(),
            Operand::Im2col { .. } => false,
        };
        let b_constant = match &c.b {
            Operand::Strided { buf, .. } => self.constant_data(operands[*buf]).is_some(),
            Operand::Im2col { .. } => false,
        };
        let column_major = col_stride != 1 && row_stride == 1;
        // `Cᵀ = Bᵀ·Aᵀ`, or `C` stored column-major and presented transposed.
        let swapped = column_major && !a_row_major;
        let stored_transposed = column_major && a_row_major && b_constant;
        let transposed = swapped || stored_transposed;
        let scattered = col_stride != 1 && !transposed && c.epilogue.is_some();
        let (first, second, rows, cols) = if swapped {
            (&c.b, &c.a, c.n, c.m)
        } else {
            (&c.a, &c.b, c.m, c.n)
        };
        let mut used = Vec::new();
        let a = self.gemm_operand(c, first, [rows, c.k], swapped, operands, &mut used)?;
        let b = self.gemm_operand(c, second, [c.k, cols], swapped, operands, &mut used)?;
        let (out_row_stride, out_col_stride) = if swapped {
            (col_stride, row_stride)
        } else {
            (row_stride, col_stride)
        };
        // Product rows as the kernel presents them: `C`'s columns when stored transposed.
        let presented_rows = if stored_transposed { cols } else { rows };
        Ok((
            StepKernel::Gemm(Gemm {
                m: rows,
                n: cols,
                k: c.k,
                batches: c.batch_len(),
                a,
                b,
                out_offsets,
                out_row_stride,
                out_col_stride,
                product: ProductMap {
                    rows_per_batch: presented_rows,
                    transposed,
                    bias: None,
                    scatter: scattered.then_some(scatter),
                    epilogue: None,
                },
            }),
            used,
        ))
    }

    /// A GEMM operand of `[rows, cols]` per batch entry from a strided contraction operand
    /// (its transpose when `transpose`): one matrix per distinct offset of a constant, else
    /// a view of its buffer.
    fn gemm_operand(
        &mut self,
        c: &Contraction,
        op: &Operand,
        [rows, cols]: [usize; 2],
        transpose: bool,
        operands: &[ValueId],
        used: &mut Vec<BufId>,
    ) -> Result<GemmOperand<Described>, String> {
        let Operand::Strided {
            buf,
            offset,
            row_stride,
            col_stride,
            batch_strides,
        } = op
        else {
            unreachable!("checked by the caller")
        };
        let (rs, cs) = if transpose {
            (*col_stride as isize, *row_stride as isize)
        } else {
            (*row_stride as isize, *col_stride as isize)
        };
        let offsets = batch_offsets(c, *offset, batch_strides);
        let Some(data) = self.constant_data(operands[*buf]) else {
            used.push(*buf);
            return Ok(GemmOperand::Buffer {
                slot: *buf,
                offsets,
                row_stride: rs,
                col_stride: cs,
            });
        };
        // One matrix per distinct offset (per group, not per image).
        let mut matrices = Vec::new();
        let mut index_of: HashMap<usize, usize> = HashMap::new();
        let mut of_batch = Vec::with_capacity(offsets.len());
        for &o in &offsets {
            let i = match index_of.get(&o) {
                Some(&i) => i,
                None => {
                    MatRef::new(data, o, rows, cols, rs, cs).map_err(|e| e.to_string())?;
                    matrices.push(MatrixView {
                        offset: o,
                        row_stride: rs,
                        col_stride: cs,
                    });
                    index_of.insert(o, matrices.len() - 1);
                    matrices.len() - 1
                }
            };
            of_batch.push(i);
        }
        let constant = self.constant(operands[*buf], false);
        Ok(GemmOperand::Packed {
            matrices: PackedDesc { constant, matrices },
            of_batch,
        })
    }
}

/// `base + Σ coordinate·stride` for every flat batch index of `c`.
fn batch_offsets(c: &Contraction, base: usize, strides: &[usize]) -> Vec<usize> {
    (0..c.batch_len())
        .map(|b| {
            let coords = c.batch_coords(b);
            base + coords
                .iter()
                .zip(strides)
                .map(|(i, s)| i * s)
                .sum::<usize>()
        })
        .collect()
}

/// `kernel` with every name cleared: what its generated code depends on.
fn unnamed(kernel: &Kernel) -> Kernel {
    let mut k = kernel.clone();
    k.name.clear();
    k.buffers.iter_mut().for_each(|b| b.name.clear());
    k.tables.iter_mut().for_each(|t| t.name.clear());
    k.scratch.iter_mut().for_each(|s| s.name.clear());
    k
}

/// Whether a contraction step's kernel presents its product transposed to the epilogue.
fn transposed_product(step: &StepKernel<Described>) -> bool {
    match step {
        StepKernel::Conv { product, .. } | StepKernel::ConvTranspose { product, .. } => {
            product.transposed
        }
        StepKernel::Gemm(g) => g.product.transposed,
        _ => false,
    }
}

fn set_epilogue(step: &mut StepKernel<Described>, epilogue: Option<TileEpilogue<Described>>) {
    match step {
        StepKernel::Conv { product, .. } | StepKernel::ConvTranspose { product, .. } => {
            product.epilogue = epilogue
        }
        StepKernel::Gemm(g) => g.product.epilogue = epilogue,
        StepKernel::Loops { .. }
        | StepKernel::Depthwise { .. }
        | StepKernel::Norm { .. }
        | StepKernel::Softmax { .. }
        | StepKernel::MaxPool { .. }
        | StepKernel::Resize { .. }
        | StepKernel::Host(_) => {}
    }
}

/// `(rows, len)` for a `softmax` node of its own over its operand's last axis, which the
/// runtime's kernel computes row by row.
fn last_axis_softmax(graph: &Graph, id: ValueId) -> Option<(usize, usize)> {
    let NodeKind::Op { op, attrs } = &graph.node(id).kind else {
        return None;
    };
    let shape = &graph.node(id).shape;
    let rank = shape.len() as i64;
    if op.name != "softmax" || rank == 0 || ![-1, rank - 1].contains(&attrs.int("axis")) {
        return None;
    }
    let len = shape[shape.len() - 1];
    Some((shape.iter().product::<usize>() / len.max(1), len))
}

/// The runtime kernel's shape for a `max_pool2d` node over `[.., H, W]`.
fn max_pool_shape(graph: &Graph, id: ValueId) -> Option<MaxPool2d> {
    let NodeKind::Op { op, attrs, .. } = &graph.node(id).kind else {
        return None;
    };
    if op.name != "max_pool2d" {
        return None;
    }
    let in_shape = &graph.node(graph.inputs(id)[0]).shape;
    let p = Pool::new(op.name, attrs, in_shape).ok()?;
    let shape = MaxPool2d {
        planes: in_shape[..in_shape.len().checked_sub(2)?].iter().product(),
        in_size: p.hw,
        out_size: p.out_hw,
        kernel: p.k,
        stride: p.s,
        padding: p.pad,
    };
    shape.check().is_ok().then_some(shape)
}

/// The runtime kernel's resize for an `upsample` node over `[N, C, H, W]`: the op table's
/// index and weight tables (`ops::pool::Resize`), which the kernel applies as given.
fn resize_shape(graph: &Graph, id: ValueId) -> Option<Resize2d> {
    let NodeKind::Op { op, attrs, .. } = &graph.node(id).kind else {
        return None;
    };
    if op.name != "upsample" {
        return None;
    }
    let in_shape = &graph.node(graph.inputs(id)[0]).shape;
    let r = Resize::new(attrs, in_shape).ok()?;
    let map = |axis: usize| match r.bilinear {
        true => AxisMap::Linear(r.linear(axis)),
        false => AxisMap::Nearest(r.nearest(axis)),
    };
    let resize = Resize2d {
        planes: in_shape[..in_shape.len().checked_sub(2)?].iter().product(),
        in_size: r.hw,
        out_size: r.out_hw,
        rows: map(0),
        cols: map(1),
    };
    resize.check().is_ok().then_some(resize)
}

/// The depthwise convolution node `id` is or contains: the graph holding it, the node, and
/// for each of its operands the position of the operand of `id` that feeds it.
fn find_depthwise(graph: &Graph, id: ValueId) -> Option<(&Graph, ValueId, Vec<usize>)> {
    match &graph.node(id).kind {
        NodeKind::Op { .. } => {
            depthwise_shape(graph, id)?;
            Some((graph, id, (0..graph.inputs(id).len()).collect()))
        }
        NodeKind::Fused { body, .. } => {
            let mut convs = body
                .nodes
                .node_indices()
                .filter(|&n| depthwise_shape(body, n).is_some());
            let conv = convs.next()?;
            if convs.next().is_some() {
                return None;
            }
            let positions = body
                .inputs(conv)
                .iter()
                .map(|i| body.inputs.iter().position(|b| b == i))
                .collect::<Option<Vec<usize>>>()?;
            Some((body, conv, positions))
        }
        NodeKind::Input | NodeKind::Param { .. } | NodeKind::Const { .. } => None,
    }
}

/// The shape of node `id` of `g` if it is a 2-D depthwise convolution (groups = input
/// channels > 1) over an NCHW or CHW input.
fn depthwise_shape(g: &Graph, id: ValueId) -> Option<Conv2dShape> {
    let NodeKind::Op { op, attrs } = &g.node(id).kind else {
        return None;
    };
    if op.name != "conv2d" {
        return None;
    }
    let inputs = g.inputs(id);
    let (batch, x) = match g.node(inputs[0]).shape.as_slice() {
        [n, c, h, w] => (*n, [*c, *h, *w]),
        [c, h, w] => (1, [*c, *h, *w]),
        _ => return None,
    };
    let groups = usize::try_from(attrs.int("groups")).ok()?;
    if groups != x[0] || groups < 2 {
        return None;
    }
    let pair = |name: &str| -> Option<[usize; 2]> {
        match attrs.ints(name) {
            [a, b] => Some([usize::try_from(*a).ok()?, usize::try_from(*b).ok()?]),
            _ => None,
        }
    };
    Some(Conv2dShape {
        batch,
        in_channels: x[0],
        out_channels: *g.node(inputs[1]).shape.first()?,
        in_size: [x[1], x[2]],
        kernel: pair("k")?,
        stride: pair("s")?,
        padding: pair("pad")?,
        dilation: pair("dilation")?,
        groups,
        layout: Layout::Nchw,
    })
}

/// The kernel of group `id` with its depthwise convolution `conv` taken out: the group's
/// body with `conv` replaced by a new last input, lowered as a group whose buffers are the
/// group's operands, then the convolution's result, then the output.
fn rest_kernel(graph: &Graph, id: ValueId, conv: ValueId) -> Result<Kernel, LowerError> {
    let node = graph.node(id);
    let NodeKind::Fused { kind, body } = &node.kind else {
        unreachable!("only groups have a rest")
    };
    let input = |n: &Node, name: String| Node {
        name,
        kind: NodeKind::Input,
        ..n.clone()
    };
    let mut rest = (**body).clone();
    let product = rest.node(conv).clone();
    let product_in = rest.add(input(&product, product.name.clone()), &[]);
    rest.replace_uses(conv, product_in);
    rest.nodes.remove_node(conv);
    rest.inputs.push(product_in);
    let mut outer = Graph::new(graph.name.clone());
    let mut leaves: Vec<ValueId> = graph
        .inputs(id)
        .iter()
        .map(|&o| {
            let n = graph.node(o);
            outer.add(input(n, n.name.clone()), &[])
        })
        .collect();
    leaves.push(outer.add(input(&product, format!("{}.product", node.name)), &[]));
    let group = outer.add(
        Node {
            kind: NodeKind::Fused {
                kind: kind.clone(),
                body: Box::new(rest),
            },
            ..node.clone()
        },
        &leaves,
    );
    lower_node(&outer, group)
}

/// The runtime's norm for node `id` if it is a `layer_norm2d` of its own (over axis 1 of
/// an `[N, C, ...]` input, whatever its rank), or a `layer_norm` of its own (over the last
/// axis: `[rows, features, 1]`): `[batch, channels, pixels]` and the norm over the node's
/// operands.
fn standalone_channel_norm(graph: &Graph, id: ValueId) -> Option<([usize; 3], ChannelNorm)> {
    let NodeKind::Op { op, attrs } = &graph.node(id).kind else {
        return None;
    };
    let shape = match (op.name, graph.node(id).shape.as_slice()) {
        ("layer_norm2d", [n, c, rest @ ..]) => [*n, *c, rest.iter().product()],
        // Over the last axis: rows of one pixel each.
        ("layer_norm", [lead @ .., c]) => [lead.iter().product(), *c, 1],
        _ => return None,
    };
    let (weight, bias) = match graph.inputs(id).len() {
        1 => (None, None),
        3 => (Some(1), Some(2)),
        _ => return None,
    };
    Some((
        shape,
        ChannelNorm {
            weight,
            bias,
            eps: attrs.float("eps") as f32,
            channels_last: false,
        },
    ))
}

/// The channel norm of a group that is its depthwise convolution `conv` and a
/// `layer_norm2d` of it, or a `layer_norm` of its channels-last permute, nothing else
/// (`band_rest`'s two forms), over the group's operands: the norm's weight and bias are the
/// group inputs at those positions.
fn channel_norm(body: &Graph, conv: ValueId) -> Option<ChannelNorm> {
    let out = body.outputs.first()?.value;
    let NodeKind::Op { op, attrs } = &body.node(out).kind else {
        return None;
    };
    let channels_last = match op.name {
        "layer_norm2d" => false,
        "layer_norm" => true,
        _ => return None,
    };
    if !band_rest(body, conv) {
        return None;
    }
    // `band_rest` checked that the norm reads the convolution, or its channels-last permute.
    let position = |i: &ValueId| body.inputs.iter().position(|b| b == i);
    let (weight, bias) = match body.inputs(out).as_slice() {
        [_] => (None, None),
        [_, w, b] => (Some(position(w)?), Some(position(b)?)),
        _ => return None,
    };
    Some(ChannelNorm {
        weight,
        bias,
        eps: attrs.float("eps") as f32,
        channels_last,
    })
}

/// Whether the rest of a group after its depthwise convolution `conv` (in `body`) computes
/// each output pixel from that pixel's channels alone and lowers to a grid over pixels in
/// row-major order, so that it may run on each finished band of output rows: the group is
/// the convolution and a channel normalisation of it, `layer_norm2d` over NCHW or
/// `layer_norm` over its channels-last permute. A normalisation lowers as the last op of its
/// kernel with the grid over its statistics sets, here (image, row) or pixels
/// (`kernel::lower::stats`).
fn band_rest(body: &Graph, conv: ValueId) -> bool {
    let out = body.outputs[0].value;
    let op_of = |id: ValueId| match &body.node(id).kind {
        NodeKind::Op { op, attrs } => Some((op.name, attrs)),
        _ => None,
    };
    let computed = body
        .nodes
        .node_indices()
        .filter(|&n| op_of(n).is_some() || matches!(body.node(n).kind, NodeKind::Fused { .. }))
        .count();
    let Some((norm, _)) = op_of(out) else {
        return false;
    };
    let source = body.inputs(out)[0];
    let four_d = body.node(conv).shape.len() == 4;
    match norm {
        "layer_norm2d" => four_d && source == conv && computed == 2,
        "layer_norm" => {
            let Some(("permute", attrs)) = op_of(source) else {
                return false;
            };
            let channels_last = attrs
                .ints("dims")
                .iter()
                .map(|&d| if d < 0 { d + 4 } else { d })
                .eq([0, 2, 3, 1]);
            four_d && channels_last && body.inputs(source)[0] == conv && computed == 3
        }
        _ => false,
    }
}

/// The buffers a loop kernel loads.
fn loads(k: &Kernel) -> BTreeSet<BufId> {
    match &k.body {
        Body::Loops { body, .. } => loads_in(body),
        Body::Contraction(c) => epilogue_reads(c),
    }
}

/// The buffers the statements load.
fn loads_in(stmts: &[Stmt]) -> BTreeSet<BufId> {
    fn walk(stmts: &[Stmt], out: &mut BTreeSet<BufId>) {
        for s in stmts {
            let mut scan = |e: &Expr| {
                e.visit(&mut |x| {
                    if let Expr::Load { buf, .. } = x {
                        out.insert(*buf);
                    }
                })
            };
            match s {
                Stmt::Loop { body, .. } => walk(body, out),
                Stmt::Let { value, .. }
                | Stmt::Store { value, .. }
                | Stmt::ScratchStore { value, .. } => scan(value),
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(stmts, &mut out);
    out
}

/// The buffers a contraction's epilogue loads.
fn epilogue_reads(c: &Contraction) -> BTreeSet<BufId> {
    c.epilogue
        .as_ref()
        .map_or_else(BTreeSet::new, |e| loads_in(&e.body))
}

/// The convolution a contraction computes, if it is one the runtime's [`Conv2d`] runs
/// as is: a constant `[C_out, C_in/groups, kh, kw]` weight times the im2col view (or, for a
/// 1x1 convolution, the plane itself) of an NCHW input, batched over (image, group). Returns
/// the shape with the weight's and the input's buffers.
fn conv_shape(kernel: &Kernel, c: &Contraction) -> Option<(Conv2dShape, BufId, BufId)> {
    let Operand::Strided {
        buf: weight,
        offset: 0,
        row_stride,
        col_stride: 1,
        batch_strides: a_strides,
    } = &c.a
    else {
        return None;
    };
    let pointwise;
    let (input, g, b_strides) = match &c.b {
        Operand::Im2col {
            buf,
            batch_strides,
            geometry,
        } => (*buf, geometry, batch_strides),
        Operand::Strided {
            buf,
            offset: 0,
            row_stride,
            col_stride: 1,
            batch_strides,
        } if *row_stride == c.n => {
            pointwise = ConvGeometry {
                channels: c.k,
                in_hw: [1, c.n],
                k: [1, 1],
                stride: [1, 1],
                pad: [0, 0],
                dilation: [1, 1],
                out_hw: [1, c.n],
            };
            (*buf, &pointwise, batch_strides)
        }
        Operand::Strided { .. } => return None,
    };
    let (plane, taps) = (g.in_hw[0] * g.in_hw[1], g.k[0] * g.k[1]);
    if *row_stride != c.k || g.channels * taps != c.k || c.m == 0 || c.k == 0 || plane == 0 {
        return None;
    }
    let weight_len = kernel.buffers[*weight].len();
    let out_channels = weight_len / c.k;
    if out_channels * c.k != weight_len || !out_channels.is_multiple_of(c.m) {
        return None;
    }
    let groups = out_channels / c.m;
    let in_channels = g.channels * groups;
    let input_len = kernel.buffers[input].len();
    let images = input_len / (in_channels * plane);
    if images * in_channels * plane != input_len {
        return None;
    }
    // The batch axes must be (image, group), outermost first, with extent-1 axes dropped, so
    // that batch entry `image·groups + group` is row block `image·C_out + group·m` of the
    // kernel's NCHW output.
    let expected: Vec<(usize, usize, usize)> = [
        (images, 0, in_channels * plane),
        (groups, c.m * c.k, g.channels * plane),
    ]
    .into_iter()
    .filter(|axis| axis.0 > 1)
    .collect();
    let actual = batch_axes(c, a_strides, b_strides)?;
    if !actual.iter().map(|x| (x[0], x[1], x[2])).eq(expected) {
        return None;
    }
    let shape = Conv2dShape {
        batch: images,
        in_channels,
        out_channels,
        in_size: g.in_hw,
        kernel: g.k,
        stride: g.stride,
        padding: g.pad,
        dilation: g.dilation,
        groups,
        layout: Layout::Nchw,
    };
    Some((shape, *weight, input))
}

/// The transposed convolution a col2im contraction computes, if the runtime's
/// [`conv_transpose2d`](bbc_runtime::kernels::conv_transpose2d) runs it as is: `A` the
/// `[C_in, C_out/groups, kh, kw]` weight read transposed, `B` the channel planes of an NCHW
/// input, batched over (image, group), and the output NCHW. Returns the shape with the
/// weight's and the input's buffers.
fn transposed_conv_shape(
    kernel: &Kernel,
    c: &Contraction,
) -> Option<(ConvTranspose2dShape, BufId, BufId)> {
    let ProductLayout::Col2im { geometry: g } = &c.layout else {
        return None;
    };
    let Operand::Strided {
        buf: weight,
        offset: 0,
        row_stride: 1,
        col_stride,
        batch_strides: a_strides,
    } = &c.a
    else {
        return None;
    };
    let Operand::Strided {
        buf: input,
        offset: 0,
        row_stride,
        col_stride: 1,
        batch_strides: b_strides,
    } = &c.b
    else {
        return None;
    };
    let (plane, out_plane) = (g.in_hw[0] * g.in_hw[1], g.out_hw[0] * g.out_hw[1]);
    let layout_ok = *col_stride == c.m
        && *row_stride == plane
        && c.n == plane
        && c.m == g.channels * g.k[0] * g.k[1];
    if !layout_ok || c.m == 0 || c.k == 0 || plane == 0 {
        return None;
    }
    let weight_len = kernel.buffers[*weight].len();
    let groups = weight_len / (c.k * c.m);
    if groups == 0 || groups * c.k * c.m != weight_len {
        return None;
    }
    let (in_channels, out_channels) = (groups * c.k, groups * g.channels);
    let images = kernel.buffers[*input].len() / (in_channels * plane);
    if images * in_channels * plane != kernel.buffers[*input].len()
        || kernel.buffers[c.out].len() != images * out_channels * out_plane
    {
        return None;
    }
    // The batch axes must be (image, group), outermost first, extent-1 axes dropped: batch
    // entry `image·groups + group` reads its group's weight and input planes and writes its
    // group's output planes.
    let expected: Vec<[usize; 4]> = [
        [images, 0, in_channels * plane, out_channels * out_plane],
        [groups, c.k * c.m, c.k * plane, g.channels * out_plane],
    ]
    .into_iter()
    .filter(|axis| axis[0] > 1)
    .collect();
    if batch_axes(c, a_strides, b_strides)? != expected {
        return None;
    }
    let shape = ConvTranspose2dShape {
        batch: images,
        in_channels,
        out_channels,
        groups,
        in_hw: g.in_hw,
        out_hw: g.out_hw,
        k: g.k,
        stride: g.stride,
        pad: g.pad,
        dilation: g.dilation,
    };
    Some((shape, *weight, *input))
}

/// A contraction's batch axes as `[extent, A's stride, B's stride, the output's stride]`,
/// outermost first, given the operands' batch strides (`None` if they do not cover them).
fn batch_axes(c: &Contraction, a: &[usize], b: &[usize]) -> Option<Vec<[usize; 4]>> {
    (a.len() == c.batch.len() && b.len() == c.batch.len()).then(|| {
        c.batch
            .iter()
            .zip(a.iter().zip(b))
            .map(|(d, (&a, &b))| [d.extent, a, b, d.out_stride])
            .collect()
    })
}

/// The output size of the convolution whose input operand is `b`.
fn conv_out_hw(b: &Operand) -> [usize; 2] {
    match b {
        Operand::Im2col { geometry, .. } => geometry.out_hw,
        // A 1x1 convolution keeps the plane, which `conv_shape` lays out as one row.
        Operand::Strided { row_stride, .. } => [1, *row_stride],
    }
}

/// Host code computing node `id` with the reference implementation: the op table's, or the
/// interpreter on a group's body.
fn reference_step(graph: &Graph, id: ValueId) -> HostFn {
    let node = graph.node(id);
    let shapes: Vec<Vec<usize>> = graph
        .inputs(id)
        .iter()
        .map(|&o| graph.node(o).shape.clone())
        .collect();
    type Eval = Box<dyn Fn(&[&Tensor]) -> Result<Tensor, String> + Send>;
    let eval: Eval = match &node.kind {
        NodeKind::Op { op, attrs } => {
            let (op, attrs) = (*op, attrs.clone());
            Box::new(move |args| Ok((op.eval)(&attrs, args)))
        }
        NodeKind::Fused { body, .. } => {
            let body = (**body).clone();
            Box::new(move |args| {
                let named: HashMap<String, Tensor> = body
                    .inputs
                    .iter()
                    .zip(args)
                    .map(|(&b, t)| (body.node(b).name.clone(), (*t).clone()))
                    .collect();
                let mut out =
                    interp::run(&body, &named, &BTreeMap::new()).map_err(|e| e.to_string())?;
                let name = &body.outputs[0].name;
                out.remove(name)
                    .ok_or_else(|| format!("the group computed no `{name}`"))
            })
        }
        NodeKind::Input | NodeKind::Param { .. } | NodeKind::Const { .. } => {
            unreachable!("only computed nodes become steps")
        }
    };
    let host: HostFn = Box::new(move |ins: &[&[f32]], out: &mut [f32]| {
        let args = ins
            .iter()
            .zip(&shapes)
            .map(|(d, s)| Tensor::from_shape_vec(s.as_slice(), d.to_vec()))
            .collect::<Result<Vec<Tensor>, _>>()
            .map_err(|e| e.to_string())?;
        let refs: Vec<&Tensor> = args.iter().collect();
        let result = eval(&refs)?;
        if result.len() != out.len() {
            return Err(format!(
                "the reference produced {} elements for {}",
                result.len(),
                out.len()
            ));
        }
        for (o, v) in out.iter_mut().zip(result.iter()) {
            *o = *v;
        }
        Ok(())
    });
    host
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::parse_text;

    /// A depthwise group that is the convolution and a `layer_norm2d` of it, or a
    /// `layer_norm` of its channels-last permute, gets a native channel norm over the group's
    /// operands (with its weight and bias, or none when not affine); a permute to another
    /// order does not.
    #[test]
    fn depthwise_layer_norm2d_groups_get_a_channel_norm() {
        let group = |norm: &str, inputs: &str, tail: &str| {
            format!(
                "graph g {{
  input %x: f32[1, 4, 9, 9]
  param %w: f32[4, 1, 3, 3] = uniform(0.3)
  param %b: f32[4] = uniform(0.3)
  param %g: f32[4] = uniform(0.3)
  param %beta: f32[4] = uniform(0.3)
  %y = fused dwconv_norm({inputs}): f32[1, 4, 9, 9] {{
    input %in0: f32[1, 4, 9, 9]
    input %in1: f32[4, 1, 3, 3]
    input %in2: f32[4]
    input %in3: f32[4]
    input %in4: f32[4]
    %c = conv2d(%in0, %in1, %in2) {{bias=true, dilation=[1, 1], groups=4, k=[3, 3], out=4, pad=[1, 1], s=[1, 1]}}: f32[1, 4, 9, 9]
    {norm}
    output %out = {tail}
  }}
  output %out = %y
}}"
            )
        };
        let norm_of = |text: &str| {
            let graph = parse_text(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            let y = graph.outputs[0].value;
            let (body, conv, positions) = find_depthwise(&graph, y).expect("a depthwise group");
            assert_eq!(positions, [0, 1, 2]);
            channel_norm(body, conv)
        };
        let operands = "%x, %w, %b, %g, %beta";
        let affine = "%n = layer_norm2d(%c, %in3, %in4) {affine=true, eps=1e-6}: f32[1, 4, 9, 9]";
        assert_eq!(
            norm_of(&group(affine, operands, "%n")),
            Some(ChannelNorm {
                weight: Some(3),
                bias: Some(4),
                eps: 1e-6,
                channels_last: false,
            })
        );
        let plain = "%n = layer_norm2d(%c) {affine=false, eps=1e-5}: f32[1, 4, 9, 9]";
        assert_eq!(
            norm_of(&group(plain, operands, "%n")),
            Some(ChannelNorm {
                weight: None,
                bias: None,
                eps: 1e-5,
                channels_last: false,
            })
        );
        let channels_last = "%p = permute(%c) {dims=[0, 2, 3, 1]}: f32[1, 9, 9, 4]
    %n = layer_norm(%p, %in3, %in4) {affine=true, eps=1e-6}: f32[1, 9, 9, 4]";
        let text = group(channels_last, operands, "%n").replace(
            "%y = fused dwconv_norm(%x, %w, %b, %g, %beta): f32[1, 4, 9, 9]",
            "%y = fused dwconv_norm(%x, %w, %b, %g, %beta): f32[1, 9, 9, 4]",
        );
        assert_eq!(
            norm_of(&text),
            Some(ChannelNorm {
                weight: Some(3),
                bias: Some(4),
                eps: 1e-6,
                channels_last: true,
            })
        );
        // Normalising over another axis of another permute is no channel norm.
        let other = text.replace("dims=[0, 2, 3, 1]", "dims=[0, 3, 2, 1]");
        assert_eq!(norm_of(&other), None);
    }

    /// Two chains that differ only in their names compile to one piece of code (unless
    /// bounds-checked), and both still compute the interpreter's values.
    #[test]
    fn identical_kernels_share_their_code() {
        let graph = parse_text(
            "graph g {
  input %x: f32[4, 33]
  input %y: f32[4, 33]
  %a1 = exp(%x): f32[4, 33]
  %a2 = mul(%a1, %x): f32[4, 33]
  %b1 = exp(%y): f32[4, 33]
  %b2 = mul(%b1, %y): f32[4, 33]
  %s = sub(%a2, %b2): f32[4, 33]
  output %out = %s
}",
        )
        .expect("parses");
        let inputs: HashMap<String, Tensor> = ["x", "y"]
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let data = (0..4 * 33).map(|i| ((i * (k + 3)) % 17) as f32 / 8.0 - 1.0);
                let t = Tensor::from_shape_vec(&[4, 33][..], data.collect()).expect("sized");
                (name.to_string(), t)
            })
            .collect();
        let expected = interp::run(&graph, &inputs, &BTreeMap::new()).expect("runs");
        for bounds_checked in [false, true] {
            let opts = ExecOptions {
                threads: 1,
                codegen: Options {
                    bounds_checked,
                    ..Options::default()
                },
            };
            let mut exe = compile(&graph, &BTreeMap::new(), &opts).expect("compiles");
            let s = exe.stats();
            assert_eq!(s.loop_kernels, 5, "{s:?}");
            assert_eq!(
                s.reused_kernels,
                if bounds_checked { 0 } else { 2 },
                "{s:?}"
            );
            let got = exe.run(&inputs).expect("runs");
            for (a, b) in got["out"].iter().zip(expected["out"].iter()) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
    }
}
