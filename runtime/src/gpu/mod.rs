//! GPU execution: the [`LaunchPlan`] contract between code generation and the
//! executors, the [`Executor`] interface both executors implement, and
//! saving/loading a compiled program ([`save_dir`], [`load_dir`]).
//!
//! - [`plan`]: the launch plan and its validation.
//! - `wgpu` (feature `wgpu`): WGSL kernels on Vulkan through wgpu.
//! - `cuda` (feature `cuda`): CUDA C kernels compiled by NVRTC, launched
//!   through the driver API; both libraries are loaded at run time.
//! - [`store`]: the on-disk form of a compiled program.

pub mod plan;
pub mod store;

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use plan::{
    BindingAccess, BufferDecl, Dialect, IoDecl, KernelSource, Launch, LaunchPlan, Place,
    ARENA_ALIGN, PLAN_FORMAT,
};
pub use store::{load_dir, save_dir};

use crate::Tensor;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Constant tensors by weights-file key.
pub type Constants = BTreeMap<String, Tensor>;

/// An error loading or running a GPU program.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No device of the requested kind: no Vulkan adapter, no CUDA driver or
    /// NVRTC library, or no CUDA device.
    #[error("{0}")]
    NoDevice(String),
    /// The plan is malformed or does not match its constants.
    #[error("invalid launch plan: {0}")]
    InvalidPlan(String),
    /// A kernel failed to compile on the device.
    #[error("kernel `{kernel}` does not compile: {log}")]
    Compile {
        /// The kernel's name in the plan.
        kernel: String,
        /// The compiler's log.
        log: String,
    },
    /// The device reported an error while loading or running.
    #[error("GPU error: {0}")]
    Device(String),
    /// Inputs or output slices that do not match the plan.
    #[error("{0}")]
    Input(String),
    /// The executor cannot do what was asked (e.g. time single kernels).
    #[error("{0}")]
    Unsupported(String),
    /// The backend was left out of this build.
    #[error("this build of bbc has no {0} support (cargo feature `{0}`)")]
    NotBuilt(&'static str),
    /// A compiled program's files cannot be read or written.
    #[error("{0}")]
    Io(String),
}

/// A loaded program on one device: the common interface of the executors.
pub trait Executor {
    /// The plan being run.
    fn plan(&self) -> &LaunchPlan;

    /// The device's name, as its driver reports it.
    fn device_name(&self) -> String;

    /// Runs one inference: `inputs[i]` holds `plan().inputs[i]` and
    /// `outputs[i]` receives `plan().outputs[i]`, each of the declared length.
    fn run_into(&mut self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<(), GpuError>;

    /// Turns per-launch timing on or off; an error where the device cannot
    /// time launches.
    fn set_profiling(&mut self, on: bool) -> Result<(), GpuError>;

    /// Device time per step summed over the profiled runs, slowest first.
    fn profile(&self) -> Vec<(String, Duration)>;

    /// Runs one inference on named inputs and returns the outputs by name.
    fn run(
        &mut self,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, GpuError> {
        let plan = self.plan().clone();
        let mut owned: Vec<Cow<'_, [f32]>> = Vec::with_capacity(plan.inputs.len());
        for io in &plan.inputs {
            let t = inputs
                .get(&io.name)
                .ok_or_else(|| GpuError::Input(format!("input `{}` is missing", io.name)))?;
            if t.shape() != io.shape.as_slice() {
                return Err(GpuError::Input(format!(
                    "input `{}` has shape {:?}, the program expects {:?}",
                    io.name,
                    t.shape(),
                    io.shape
                )));
            }
            owned.push(tensor_data(t));
        }
        let ins: Vec<&[f32]> = owned.iter().map(|c| c.as_ref()).collect();
        let mut results: Vec<Vec<f32>> = plan
            .outputs
            .iter()
            .map(|io| vec![0.0; plan.buffers[io.buffer].len])
            .collect();
        let mut outs: Vec<&mut [f32]> = results.iter_mut().map(Vec::as_mut_slice).collect();
        self.run_into(&ins, &mut outs)?;
        plan.outputs
            .iter()
            .zip(results)
            .map(|(io, data)| {
                Tensor::from_shape_vec(io.shape.clone(), data)
                    .map(|t| (io.name.clone(), t))
                    .map_err(|e| GpuError::Input(format!("output `{}`: {e}", io.name)))
            })
            .collect()
    }
}

/// Loads `plan` on a device of its dialect: Vulkan through wgpu for WGSL,
/// the first CUDA device for CUDA.
#[cfg_attr(not(all(feature = "wgpu", feature = "cuda")), allow(unused_variables))]
pub fn open(plan: LaunchPlan, constants: &Constants) -> Result<Box<dyn Executor>, GpuError> {
    match plan.dialect {
        #[cfg(feature = "wgpu")]
        Dialect::Wgsl => Ok(Box::new(self::wgpu::WgpuExecutor::new(plan, constants)?)),
        #[cfg(not(feature = "wgpu"))]
        Dialect::Wgsl => Err(GpuError::NotBuilt("wgpu")),
        #[cfg(feature = "cuda")]
        Dialect::Cuda => Ok(Box::new(self::cuda::CudaExecutor::new(plan, constants)?)),
        #[cfg(not(feature = "cuda"))]
        Dialect::Cuda => Err(GpuError::NotBuilt("cuda")),
    }
}

/// A tensor's elements in row-major order, copied only if not contiguous.
fn tensor_data(t: &Tensor) -> Cow<'_, [f32]> {
    match t.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(t.iter().copied().collect()),
    }
}

/// Validates the plan and pairs each distinct constant key with its data,
/// checking that every constant buffer matches its tensor's length.
pub(crate) fn constant_data<'a>(
    plan: &LaunchPlan,
    constants: &'a Constants,
) -> Result<BTreeMap<String, Cow<'a, [f32]>>, GpuError> {
    plan.validate().map_err(GpuError::InvalidPlan)?;
    let mut out = BTreeMap::new();
    for buffer in &plan.buffers {
        let Place::Constant { key } = &buffer.place else {
            continue;
        };
        let tensor = constants.get(key).ok_or_else(|| {
            GpuError::InvalidPlan(format!(
                "buffer `{}` reads constant `{key}`, which the weights do not hold",
                buffer.name
            ))
        })?;
        if tensor.len() != buffer.len {
            return Err(GpuError::InvalidPlan(format!(
                "buffer `{}` has {} elements but constant `{key}` has {}",
                buffer.name,
                buffer.len,
                tensor.len()
            )));
        }
        out.entry(key.clone())
            .or_insert_with(|| tensor_data(tensor));
    }
    Ok(out)
}

/// The element range of arena buffer `index`; [`LaunchPlan::validate`]
/// guarantees that inputs and outputs live in the arena.
#[cfg(feature = "cuda")]
pub(crate) fn arena_range(plan: &LaunchPlan, index: usize) -> std::ops::Range<usize> {
    let buffer = &plan.buffers[index];
    let offset = match buffer.place {
        Place::Arena { offset } => offset,
        Place::Constant { .. } => unreachable!("validated: I/O buffers live in the arena"),
    };
    offset..offset + buffer.len
}

/// Checks the slices passed to [`Executor::run_into`] against the plan.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub(crate) fn check_io(
    plan: &LaunchPlan,
    inputs: &[&[f32]],
    outputs: &[&mut [f32]],
) -> Result<(), GpuError> {
    let check = |role: &str, decls: &[IoDecl], lens: &mut dyn Iterator<Item = usize>| {
        let lens: Vec<usize> = lens.collect();
        if lens.len() != decls.len() {
            return Err(GpuError::Input(format!(
                "{} {role}s given, the program has {}",
                lens.len(),
                decls.len()
            )));
        }
        for (io, len) in decls.iter().zip(lens) {
            let want = plan.buffers[io.buffer].len;
            if len != want {
                return Err(GpuError::Input(format!(
                    "{role} `{}` has {len} elements, the program expects {want}",
                    io.name
                )));
            }
        }
        Ok(())
    };
    check("input", &plan.inputs, &mut inputs.iter().map(|s| s.len()))?;
    check(
        "output",
        &plan.outputs,
        &mut outputs.iter().map(|s| s.len()),
    )
}

/// Sums per-launch durations by step and sorts them slowest first.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub(crate) fn profile_by_step(
    plan: &LaunchPlan,
    per_launch: &[Duration],
) -> Vec<(String, Duration)> {
    let mut by_step: BTreeMap<&str, Duration> = BTreeMap::new();
    for (launch, t) in plan.launches.iter().zip(per_launch) {
        *by_step.entry(launch.step.as_str()).or_default() += *t;
    }
    let mut out: Vec<(String, Duration)> = by_step
        .into_iter()
        .map(|(step, t)| (step.to_string(), t))
        .collect();
    out.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    out
}
