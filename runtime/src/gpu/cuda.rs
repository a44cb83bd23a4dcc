//! The CUDA executor: runs a CUDA [`LaunchPlan`] on an NVIDIA GPU.
//!
//! The driver (`libcuda`) and NVRTC are loaded at run time, so this builds
//! and runs on machines without CUDA; their presence is checked first,
//! because cudarc's safe API panics when a library is missing. At load every
//! kernel is compiled once with NVRTC for the device's compute capability and
//! the arena and constants are allocated; an inference copies the inputs in,
//! launches every kernel in order on one stream and copies the outputs back.
//! With profiling on, each launch is bracketed by events.

use super::{
    check_io, constant_data, profile_by_step, Constants, Executor, GpuError, LaunchPlan, Place,
    ARENA_ALIGN,
};
use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Bytes per f32 element.
const F32: u64 = 4;

/// Checks that the CUDA driver and NVRTC libraries can be loaded, without
/// touching the APIs that panic when they cannot.
pub fn check_libraries() -> Result<(), GpuError> {
    // SAFETY: both only try to dlopen the libraries' candidate names.
    let driver = unsafe { cudarc::driver::sys::is_culib_present() };
    if !driver {
        return Err(GpuError::NoDevice(
            "CUDA driver not found: libcuda.so could not be loaded (the cuda target needs an \
             NVIDIA GPU and its driver)"
                .into(),
        ));
    }
    // SAFETY: as above.
    let nvrtc = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    if !nvrtc {
        return Err(GpuError::NoDevice(
            "CUDA runtime compiler not found: libnvrtc.so could not be loaded (install the CUDA \
             toolkit's NVRTC, or put its lib folder on LD_LIBRARY_PATH)"
                .into(),
        ));
    }
    Ok(())
}

/// The first CUDA device as a context, after [`check_libraries`].
fn open_context() -> Result<Arc<CudaContext>, GpuError> {
    check_libraries()?;
    let count = CudaContext::device_count()
        .map_err(|e| GpuError::NoDevice(format!("CUDA driver cannot start: {e}")))?;
    if count < 1 {
        return Err(GpuError::NoDevice("no CUDA device found".into()));
    }
    CudaContext::new(0).map_err(|e| GpuError::NoDevice(format!("cannot open CUDA device 0: {e}")))
}

/// The name of CUDA device 0, or why there is none (no driver, no NVRTC, no device).
pub fn probe() -> Result<String, GpuError> {
    let ctx = open_context()?;
    ctx.name()
        .map_err(|e| GpuError::NoDevice(format!("cannot query CUDA device 0: {e}")))
}

/// A CUDA plan loaded on device 0, ready to run.
pub struct CudaExecutor {
    plan: LaunchPlan,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arena: CudaSlice<f32>,
    /// Kept alive: launches use raw pointers into them.
    _constants: Vec<CudaSlice<f32>>,
    functions: Vec<CudaFunction>,
    /// The device address of every plan buffer.
    addresses: Vec<u64>,
    /// The arena element ranges of the inputs and of the outputs.
    input_ranges: Vec<Range<usize>>,
    output_ranges: Vec<Range<usize>>,
    profiling: bool,
    /// Device time of each launch summed over the profiled runs.
    launch_times: Vec<Duration>,
}

fn device_error(what: &str) -> impl Fn(cudarc::driver::DriverError) -> GpuError + '_ {
    move |e| GpuError::Device(format!("{what}: {e}"))
}

impl CudaExecutor {
    /// Compiles and loads `plan` on CUDA device 0 with its constants.
    pub fn new(plan: LaunchPlan, constants: &Constants) -> Result<CudaExecutor, GpuError> {
        if plan.dialect != super::Dialect::Cuda {
            return Err(GpuError::InvalidPlan(format!(
                "the CUDA executor runs CUDA kernels, this plan holds {:?} ones",
                plan.dialect
            )));
        }
        let data = constant_data(&plan, constants)?;
        for kernel in &plan.kernels {
            // NVRTC and the module loader take C strings and panic on a NUL.
            if [&kernel.name, &kernel.entry, &kernel.source]
                .iter()
                .any(|text| text.contains('\0'))
            {
                return Err(GpuError::InvalidPlan(format!(
                    "kernel `{}` contains a NUL character",
                    kernel.name
                )));
            }
        }
        let ctx = open_context()?;
        // One stream orders everything, so cudarc's per-slice event tracking is not needed.
        // SAFETY: no other stream ever touches this context's allocations.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(device_error("cannot read the compute capability"))?;
        let arch = format!("--gpu-architecture=sm_{major}{minor}");
        let ptxs = compile_all(&plan, &arch)?;
        let mut functions = Vec::with_capacity(plan.kernels.len());
        for (kernel, ptx) in plan.kernels.iter().zip(ptxs) {
            let module = ctx.load_module(ptx).map_err(|e| GpuError::Compile {
                kernel: kernel.name.clone(),
                log: format!("the driver cannot load its PTX: {e}"),
            })?;
            let function = module
                .load_function(&kernel.entry)
                .map_err(|e| GpuError::Compile {
                    kernel: kernel.name.clone(),
                    log: format!("no entry point `{}`: {e}", kernel.entry),
                })?;
            functions.push(function);
        }

        let stream = ctx.default_stream();
        let arena = stream
            .alloc_zeros::<f32>(plan.arena_len + ARENA_ALIGN)
            .map_err(device_error("cannot allocate the arena"))?;
        let mut constant_slices = Vec::with_capacity(data.len());
        let mut constant_addresses = std::collections::BTreeMap::new();
        for (key, values) in &data {
            let slice = if values.is_empty() {
                stream.alloc_zeros::<f32>(1)
            } else {
                stream.clone_htod(values.as_ref())
            }
            .map_err(|e| GpuError::Device(format!("cannot upload constant `{key}`: {e}")))?;
            constant_addresses.insert(key.as_str(), address(&slice, &stream));
            constant_slices.push(slice);
        }
        let arena_base = address(&arena, &stream);
        let addresses = plan
            .buffers
            .iter()
            .map(|b| match &b.place {
                Place::Arena { offset } => arena_base + *offset as u64 * F32,
                Place::Constant { key } => constant_addresses[key.as_str()],
            })
            .collect();
        stream
            .synchronize()
            .map_err(device_error("cannot upload the constants"))?;
        let launches = plan.launches.len();
        let ranges = |decls: &[super::IoDecl]| -> Vec<Range<usize>> {
            decls
                .iter()
                .map(|io| super::arena_range(&plan, io.buffer))
                .collect()
        };
        let (input_ranges, output_ranges) = (ranges(&plan.inputs), ranges(&plan.outputs));
        Ok(CudaExecutor {
            plan,
            ctx,
            stream,
            arena,
            _constants: constant_slices,
            functions,
            addresses,
            input_ranges,
            output_ranges,
            profiling: false,
            launch_times: vec![Duration::ZERO; launches],
        })
    }
}

/// Compiles every kernel of `plan` to PTX for `arch` (an NVRTC option), on all cores:
/// NVRTC takes tens of milliseconds per kernel and its programs are independent.
fn compile_all(plan: &LaunchPlan, arch: &str) -> Result<Vec<cudarc::nvrtc::Ptx>, GpuError> {
    let include_paths = cuda_include_paths();
    let compile = |kernel: &super::KernelSource| {
        let options = cudarc::nvrtc::CompileOptions {
            options: vec![arch.to_string()],
            include_paths: include_paths.clone(),
            name: Some(format!("{}.cu", kernel.name)),
            ..Default::default()
        };
        cudarc::nvrtc::compile_ptx_with_opts(&kernel.source, options).map_err(|e| {
            GpuError::Compile {
                kernel: kernel.name.clone(),
                log: match e {
                    cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                        log.to_string_lossy().into_owned()
                    }
                    other => other.to_string(),
                },
            }
        })
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = plan.kernels.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = plan
            .kernels
            .chunks(chunk)
            .map(|kernels| scope.spawn(move || kernels.iter().map(compile).collect::<Vec<_>>()))
            .collect();
        let mut ptxs = Vec::with_capacity(plan.kernels.len());
        for worker in workers {
            let results = worker
                .join()
                .map_err(|_| GpuError::Device("an NVRTC compile thread panicked".into()))?;
            for ptx in results {
                ptxs.push(ptx?);
            }
        }
        Ok(ptxs)
    })
}

/// A slice's device address.
fn address(slice: &CudaSlice<f32>, stream: &CudaStream) -> u64 {
    let (ptr, _sync) = slice.device_ptr(stream);
    ptr
}

/// CUDA header folders that exist here, for kernels including `<mma.h>` and
/// the like (NVRTC only knows its built-in headers otherwise).
fn cuda_include_paths() -> Vec<String> {
    let mut roots: Vec<String> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .collect();
    roots.push("/usr/local/cuda".into());
    roots
        .into_iter()
        .map(|root| format!("{root}/include"))
        .filter(|dir| std::path::Path::new(dir).join("cuda_runtime.h").is_file())
        .collect()
}

impl Executor for CudaExecutor {
    fn plan(&self) -> &LaunchPlan {
        &self.plan
    }

    fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "CUDA device 0".into())
    }

    fn run_into(&mut self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<(), GpuError> {
        check_io(&self.plan, inputs, outputs)?;
        for (data, range) in inputs.iter().zip(&self.input_ranges) {
            if !data.is_empty() {
                let mut view = self.arena.slice_mut(range.clone());
                self.stream
                    .memcpy_htod(*data, &mut view)
                    .map_err(device_error("cannot copy an input to the device"))?;
            }
        }
        let mut events = Vec::new();
        for (launch, function) in self
            .plan
            .launches
            .iter()
            .map(|l| (l, &self.functions[l.kernel]))
        {
            let kernel = &self.plan.kernels[launch.kernel];
            let pointers: Vec<u64> = launch.args.iter().map(|&a| self.addresses[a]).collect();
            let mut builder = self.stream.launch_builder(function);
            for pointer in &pointers {
                builder.arg(pointer);
            }
            if self.profiling {
                builder.record_kernel_launch(sys::CUevent_flags::CU_EVENT_DEFAULT);
            }
            let config = LaunchConfig {
                grid_dim: launch.grid.into(),
                block_dim: kernel.workgroup.into(),
                shared_mem_bytes: 0,
            };
            // SAFETY: the plan was validated at load (every argument is a buffer of the plan,
            // inside its allocation) and each kernel takes one `float*` per binding.
            let recorded = unsafe { builder.launch(config) }.map_err(|e| {
                GpuError::Device(format!(
                    "cannot launch `{}` ({}): {e}",
                    launch.step, kernel.name
                ))
            })?;
            events.extend(recorded);
        }
        for (out, range) in outputs.iter_mut().zip(&self.output_ranges) {
            if !out.is_empty() {
                self.stream
                    .memcpy_dtoh(&self.arena.slice(range.clone()), *out)
                    .map_err(device_error("cannot copy an output from the device"))?;
            }
        }
        self.stream
            .synchronize()
            .map_err(device_error("the kernels failed"))?;
        for (total, (start, end)) in self.launch_times.iter_mut().zip(&events) {
            let ms = start
                .elapsed_ms(end)
                .map_err(device_error("cannot read a launch timer"))?;
            *total += Duration::from_secs_f64(f64::from(ms) / 1e3);
        }
        Ok(())
    }

    fn set_profiling(&mut self, on: bool) -> Result<(), GpuError> {
        self.profiling = on;
        self.launch_times
            .iter_mut()
            .for_each(|t| *t = Duration::ZERO);
        Ok(())
    }

    fn profile(&self) -> Vec<(String, Duration)> {
        profile_by_step(&self.plan, &self.launch_times)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{BindingAccess, Dialect, KernelSource, PLAN_FORMAT};

    /// Kernels `k0`..`k8`, each storing its own index: more kernels than compile threads.
    fn plan() -> LaunchPlan {
        let kernels = (0..9)
            .map(|i| KernelSource {
                name: format!("k{i}"),
                entry: format!("k{i}"),
                source: format!(
                    "extern \"C\" __global__ void k{i}(float* y) {{ y[threadIdx.x] = {i}.0f; }}\n"
                ),
                workgroup: [32, 1, 1],
                bindings: vec![BindingAccess::ReadWrite],
            })
            .collect();
        LaunchPlan {
            format: PLAN_FORMAT,
            dialect: Dialect::Cuda,
            arena_len: 0,
            buffers: Vec::new(),
            kernels,
            launches: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Needs NVRTC only (no GPU): skipped, visibly, where it cannot be loaded.
    #[test]
    fn kernels_compile_in_parallel_in_order_and_errors_name_the_kernel() {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED: NVRTC (libnvrtc.so) not found");
            return;
        }
        let mut plan = plan();
        let ptxs = compile_all(&plan, "--gpu-architecture=sm_80").unwrap();
        assert_eq!(ptxs.len(), plan.kernels.len());
        for (i, ptx) in ptxs.iter().enumerate() {
            let text = ptx.to_src();
            assert!(text.contains(".target sm_80"), "{text}");
            assert!(
                text.contains(&format!(".entry k{i}(")),
                "kernel {i} out of order"
            );
        }
        plan.kernels[5].source = plan.kernels[5]
            .source
            .replace("threadIdx", "undefined_thing");
        match compile_all(&plan, "--gpu-architecture=sm_80") {
            Err(GpuError::Compile { kernel, log }) => {
                assert_eq!(kernel, "k5");
                assert!(log.contains("undefined_thing"), "{log}");
            }
            other => panic!("expected a compile error, got {:?}", other.map(|p| p.len())),
        }
    }
}
