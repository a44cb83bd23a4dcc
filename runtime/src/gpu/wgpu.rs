//! The wgpu executor: runs a WGSL [`LaunchPlan`] on a Vulkan device.
//!
//! At load: one arena buffer, one buffer per constant, and per kernel a
//! shader module, an explicit bind group layout (from the plan's binding
//! accesses) and a pipeline; per launch a bind group over buffer slices. Per
//! inference: inputs are written with `queue.write_buffer`, every dispatch is
//! recorded into one compute pass, the outputs are copied into one staging
//! buffer, the work is submitted once and only the outputs are read back.
//! With profiling on (where the device has timestamp queries), each launch
//! gets its own pass with timestamps at its start and end.
//!
//! wgpu reports validation errors to a handler that panics by default; here
//! loading runs under error scopes and a handler records anything else, so
//! a bad kernel or plan is an error, never a crash.

use super::{
    check_io, constant_data, profile_by_step, BindingAccess, Constants, Executor, GpuError,
    LaunchPlan, Place, ARENA_ALIGN,
};
use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Environment variable selecting an adapter by a substring of its name.
pub const ADAPTER_ENV: &str = "BBC_GPU_ADAPTER";

/// Bytes per f32 element.
const F32: u64 = 4;

/// An open Vulkan device; cheap to clone, so one device can serve several
/// executors (tests share one: creating a device costs ~100 ms).
#[derive(Clone)]
pub struct WgpuDevice {
    device: ::wgpu::Device,
    queue: ::wgpu::Queue,
    info: ::wgpu::AdapterInfo,
    limits: ::wgpu::Limits,
    /// Errors wgpu reported outside an error scope, oldest first.
    errors: Arc<Mutex<Vec<String>>>,
}

impl WgpuDevice {
    /// Opens the adapter whose name contains `$BBC_GPU_ADAPTER`
    /// (case-insensitive), else the first Vulkan adapter, with that adapter's
    /// own limits so large arenas and many bindings fit.
    pub fn open() -> Result<WgpuDevice, GpuError> {
        let mut desc = ::wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = ::wgpu::Backends::VULKAN;
        let instance = ::wgpu::Instance::new(desc);
        let wanted = std::env::var(ADAPTER_ENV).ok().filter(|s| !s.is_empty());
        let adapter = match &wanted {
            Some(pattern) => {
                let adapters =
                    pollster::block_on(instance.enumerate_adapters(::wgpu::Backends::VULKAN));
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                let needle = pattern.to_lowercase();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&needle))
                    .ok_or_else(|| {
                        GpuError::NoDevice(format!(
                            "no Vulkan adapter matches {ADAPTER_ENV}={pattern} (adapters: {})",
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        ))
                    })?
            }
            None => pollster::block_on(instance.request_adapter(&::wgpu::RequestAdapterOptions {
                power_preference: ::wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            }))
            .map_err(|e| {
                GpuError::NoDevice(format!(
                    "no GPU adapter ({e}); the gpu target needs a Vulkan driver, e.g. \
                     Mesa's lavapipe: apt-get install mesa-vulkan-drivers libvulkan1"
                ))
            })?,
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) =
            pollster::block_on(adapter.request_device(&::wgpu::DeviceDescriptor {
                label: Some("bbc"),
                // Timestamps, where the adapter has them, for per-launch profiles.
                required_features: adapter.features() & ::wgpu::Features::TIMESTAMP_QUERY,
                required_limits: limits.clone(),
                ..Default::default()
            }))
            .map_err(|e| GpuError::NoDevice(format!("cannot open `{}`: {e}", info.name)))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = Arc::clone(&errors);
        device.on_uncaptured_error(Arc::new(move |e: ::wgpu::Error| {
            if let Ok(mut list) = sink.lock() {
                list.push(e.to_string());
            }
        }));
        Ok(WgpuDevice {
            device,
            queue,
            info,
            limits,
            errors,
        })
    }

    /// The adapter's name and driver, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (llvmpipe)`.
    pub fn name(&self) -> String {
        format!("{} ({})", self.info.name, self.info.driver)
    }

    /// Takes the errors recorded outside error scopes, as one message.
    fn take_errors(&self) -> Result<(), GpuError> {
        let mut list = self
            .errors
            .lock()
            .map_err(|_| GpuError::Device("error log poisoned".into()))?;
        if list.is_empty() {
            return Ok(());
        }
        let text = list.join("; ");
        list.clear();
        Err(GpuError::Device(text))
    }

    /// Runs `make` under a validation error scope, returning its error if any.
    fn scoped<T>(&self, make: impl FnOnce() -> T) -> Result<T, String> {
        let scope = self
            .device
            .push_error_scope(::wgpu::ErrorFilter::Validation);
        let value = make();
        match pollster::block_on(scope.pop()) {
            None => Ok(value),
            Some(e) => Err(e.to_string()),
        }
    }
}

/// A WGSL plan loaded on a device, ready to run.
pub struct WgpuExecutor {
    plan: LaunchPlan,
    gpu: WgpuDevice,
    arena: ::wgpu::Buffer,
    /// The wgpu buffer holding each plan buffer, and its byte offset there.
    placement: Vec<(BufferRef, u64)>,
    constants: Vec<::wgpu::Buffer>,
    pipelines: Vec<::wgpu::ComputePipeline>,
    bind_groups: Vec<::wgpu::BindGroup>,
    staging: ::wgpu::Buffer,
    /// Byte offset of each output in the staging buffer.
    staging_offsets: Vec<u64>,
    /// Per-launch timestamps, while profiling.
    profiler: Option<Profiler>,
}

/// Timestamps around every launch and their totals.
struct Profiler {
    queries: ::wgpu::QuerySet,
    /// Where the queries resolve to, and its mappable copy.
    resolved: ::wgpu::Buffer,
    readback: ::wgpu::Buffer,
    /// Summed device time of each launch.
    times: Vec<Duration>,
}

impl Profiler {
    fn new(gpu: &WgpuDevice, launches: usize) -> Result<Profiler, GpuError> {
        if !gpu
            .device
            .features()
            .contains(::wgpu::Features::TIMESTAMP_QUERY)
        {
            return Err(GpuError::Unsupported(format!(
                "`{}` has no timestamp queries, so it cannot time kernels",
                gpu.info.name
            )));
        }
        let count = 2 * launches;
        if count > ::wgpu::QUERY_SET_MAX_QUERIES as usize {
            return Err(GpuError::Unsupported(format!(
                "cannot time {launches} launches: wgpu allows {} timestamps per query set",
                ::wgpu::QUERY_SET_MAX_QUERIES
            )));
        }
        let bytes = (count.max(1) * 8) as u64;
        let buffer = |label, usage| {
            gpu.device.create_buffer(&::wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        Ok(Profiler {
            queries: gpu.device.create_query_set(&::wgpu::QuerySetDescriptor {
                label: Some("launch timestamps"),
                ty: ::wgpu::QueryType::Timestamp,
                count: count.max(1) as u32,
            }),
            resolved: buffer(
                "resolved timestamps",
                ::wgpu::BufferUsages::QUERY_RESOLVE | ::wgpu::BufferUsages::COPY_SRC,
            ),
            readback: buffer(
                "timestamps",
                ::wgpu::BufferUsages::MAP_READ | ::wgpu::BufferUsages::COPY_DST,
            ),
            times: vec![Duration::ZERO; launches],
        })
    }
}

/// Which wgpu buffer a plan buffer lives in.
#[derive(Clone, Copy)]
enum BufferRef {
    Arena,
    Constant(usize),
}

impl WgpuExecutor {
    /// Opens a device (see [`WgpuDevice::open`]) and loads `plan` on it.
    pub fn new(plan: LaunchPlan, constants: &Constants) -> Result<WgpuExecutor, GpuError> {
        WgpuExecutor::with_device(&WgpuDevice::open()?, plan, constants)
    }

    /// Loads `plan` with its constants on `gpu`: buffers, pipelines and bind
    /// groups are all built here, once.
    pub fn with_device(
        gpu: &WgpuDevice,
        plan: LaunchPlan,
        constants: &Constants,
    ) -> Result<WgpuExecutor, GpuError> {
        if plan.dialect != super::Dialect::Wgsl {
            return Err(GpuError::InvalidPlan(format!(
                "the wgpu executor runs WGSL kernels, this plan holds {:?} ones",
                plan.dialect
            )));
        }
        let data = constant_data(&plan, constants)?;
        check_limits(&plan, &gpu.limits)?;
        let device = &gpu.device;
        // Padding past the last slice lets an empty buffer bind 4 bytes.
        let arena = device.create_buffer(&::wgpu::BufferDescriptor {
            label: Some("arena"),
            size: (plan.arena_len + ARENA_ALIGN) as u64 * F32,
            usage: ::wgpu::BufferUsages::STORAGE
                | ::wgpu::BufferUsages::COPY_DST
                | ::wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut constant_buffers = Vec::with_capacity(data.len());
        let mut constant_index = BTreeMap::new();
        for (key, values) in &data {
            let buffer = device.create_buffer(&::wgpu::BufferDescriptor {
                label: Some(key),
                size: values.len().max(1) as u64 * F32,
                usage: ::wgpu::BufferUsages::STORAGE
                    | ::wgpu::BufferUsages::COPY_DST
                    | ::wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            gpu.queue.write_buffer(&buffer, 0, as_bytes(values));
            constant_index.insert(key.as_str(), constant_buffers.len());
            constant_buffers.push(buffer);
        }
        let placement: Vec<(BufferRef, u64)> = plan
            .buffers
            .iter()
            .map(|b| match &b.place {
                Place::Arena { offset } => (BufferRef::Arena, *offset as u64 * F32),
                Place::Constant { key } => (BufferRef::Constant(constant_index[key.as_str()]), 0),
            })
            .collect();

        let mut layouts = Vec::with_capacity(plan.kernels.len());
        let mut pipelines = Vec::with_capacity(plan.kernels.len());
        for kernel in &plan.kernels {
            let compile_error = |log: String| GpuError::Compile {
                kernel: kernel.name.clone(),
                log,
            };
            let entries: Vec<::wgpu::BindGroupLayoutEntry> = kernel
                .bindings
                .iter()
                .enumerate()
                .map(|(i, access)| ::wgpu::BindGroupLayoutEntry {
                    binding: i as u32,
                    visibility: ::wgpu::ShaderStages::COMPUTE,
                    ty: ::wgpu::BindingType::Buffer {
                        ty: ::wgpu::BufferBindingType::Storage {
                            read_only: *access == BindingAccess::Read,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                })
                .collect();
            let (layout, pipeline) = gpu
                .scoped(|| {
                    let module = device.create_shader_module(::wgpu::ShaderModuleDescriptor {
                        label: Some(&kernel.name),
                        source: ::wgpu::ShaderSource::Wgsl(kernel.source.as_str().into()),
                    });
                    let layout =
                        device.create_bind_group_layout(&::wgpu::BindGroupLayoutDescriptor {
                            label: Some(&kernel.name),
                            entries: &entries,
                        });
                    let pipeline_layout =
                        device.create_pipeline_layout(&::wgpu::PipelineLayoutDescriptor {
                            label: Some(&kernel.name),
                            bind_group_layouts: &[Some(&layout)],
                            immediate_size: 0,
                        });
                    let pipeline =
                        device.create_compute_pipeline(&::wgpu::ComputePipelineDescriptor {
                            label: Some(&kernel.name),
                            layout: Some(&pipeline_layout),
                            module: &module,
                            entry_point: Some(&kernel.entry),
                            compilation_options: Default::default(),
                            cache: None,
                        });
                    (layout, pipeline)
                })
                .map_err(compile_error)?;
            layouts.push(layout);
            pipelines.push(pipeline);
        }

        let buffer_of = |r: BufferRef| match r {
            BufferRef::Arena => &arena,
            BufferRef::Constant(i) => &constant_buffers[i],
        };
        let mut bind_groups = Vec::with_capacity(plan.launches.len());
        for (i, launch) in plan.launches.iter().enumerate() {
            let entries: Vec<::wgpu::BindGroupEntry> = launch
                .args
                .iter()
                .enumerate()
                .map(|(binding, &arg)| {
                    let (r, offset) = placement[arg];
                    ::wgpu::BindGroupEntry {
                        binding: binding as u32,
                        resource: ::wgpu::BindingResource::Buffer(::wgpu::BufferBinding {
                            buffer: buffer_of(r),
                            offset,
                            size: NonZeroU64::new(plan.buffers[arg].len.max(1) as u64 * F32),
                        }),
                    }
                })
                .collect();
            let group = gpu
                .scoped(|| {
                    device.create_bind_group(&::wgpu::BindGroupDescriptor {
                        label: Some(&launch.step),
                        layout: &layouts[launch.kernel],
                        entries: &entries,
                    })
                })
                .map_err(|e| GpuError::InvalidPlan(format!("launch {i} `{}`: {e}", launch.step)))?;
            bind_groups.push(group);
        }

        let mut staging_offsets = Vec::with_capacity(plan.outputs.len());
        let mut staging_len = 0u64;
        for io in &plan.outputs {
            staging_offsets.push(staging_len);
            staging_len += plan.buffers[io.buffer].len as u64 * F32;
        }
        let staging = device.create_buffer(&::wgpu::BufferDescriptor {
            label: Some("outputs"),
            size: staging_len.max(F32),
            usage: ::wgpu::BufferUsages::MAP_READ | ::wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.take_errors()?;
        Ok(WgpuExecutor {
            plan,
            gpu: gpu.clone(),
            arena,
            placement,
            constants: constant_buffers,
            pipelines,
            bind_groups,
            staging,
            staging_offsets,
            profiler: None,
        })
    }

    /// Records launch `i` into `pass`.
    fn dispatch(&self, pass: &mut ::wgpu::ComputePass<'_>, i: usize) {
        let launch = &self.plan.launches[i];
        pass.set_pipeline(&self.pipelines[launch.kernel]);
        pass.set_bind_group(0, &self.bind_groups[i], &[]);
        let [x, y, z] = launch.grid;
        pass.dispatch_workgroups(x, y, z);
    }

    fn buffer(&self, r: BufferRef) -> &::wgpu::Buffer {
        match r {
            BufferRef::Arena => &self.arena,
            BufferRef::Constant(i) => &self.constants[i],
        }
    }
}

/// Checks the plan against the device's limits, so that exceeding one is a
/// message naming the buffer or launch rather than a validation failure.
fn check_limits(plan: &LaunchPlan, limits: &::wgpu::Limits) -> Result<(), GpuError> {
    let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
    let arena_bytes = (plan.arena_len + ARENA_ALIGN) as u64 * F32;
    if arena_bytes > limits.max_buffer_size {
        return Err(GpuError::Device(format!(
            "the activation arena needs {:.1} MiB but the device's largest buffer is {:.1} MiB",
            mib(arena_bytes),
            mib(limits.max_buffer_size)
        )));
    }
    for b in &plan.buffers {
        let bytes = b.len as u64 * F32;
        if bytes > limits.max_storage_buffer_binding_size {
            return Err(GpuError::Device(format!(
                "buffer `{}` of {:.1} MiB exceeds the device's storage-binding limit of {:.1} MiB",
                b.name,
                mib(bytes),
                mib(limits.max_storage_buffer_binding_size)
            )));
        }
    }
    for k in &plan.kernels {
        if k.bindings.len() > limits.max_storage_buffers_per_shader_stage as usize {
            return Err(GpuError::Device(format!(
                "kernel `{}` binds {} buffers; the device allows {}",
                k.name,
                k.bindings.len(),
                limits.max_storage_buffers_per_shader_stage
            )));
        }
        let invocations: u64 = k.workgroup.iter().map(|&d| u64::from(d)).product();
        if invocations > u64::from(limits.max_compute_invocations_per_workgroup) {
            return Err(GpuError::Device(format!(
                "kernel `{}` has {invocations} invocations per workgroup; the device allows {}",
                k.name, limits.max_compute_invocations_per_workgroup
            )));
        }
    }
    for l in &plan.launches {
        if l.grid
            .iter()
            .any(|&g| g > limits.max_compute_workgroups_per_dimension)
        {
            return Err(GpuError::Device(format!(
                "launch `{}` has grid {:?}; the device allows {} workgroups per dimension",
                l.step, l.grid, limits.max_compute_workgroups_per_dimension
            )));
        }
    }
    Ok(())
}

/// The outcome of a buffer mapping, filled in by wgpu's callback during `poll`.
type MapStatus = Arc<Mutex<Option<Result<(), ::wgpu::BufferAsyncError>>>>;

/// Asks for all of `buffer` to be mapped for reading once the queue is polled.
fn map_for_reading(buffer: &::wgpu::Buffer) -> MapStatus {
    let status = MapStatus::default();
    let slot = Arc::clone(&status);
    buffer
        .slice(..)
        .map_async(::wgpu::MapMode::Read, move |result| {
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(result);
            }
        });
    status
}

/// How long [`wait_mapped`] waits for a mapping's outcome after the work is done.
const MAP_TIMEOUT: Duration = Duration::from_secs(30);

/// Polls `device` until every mapping of `pending` has its outcome. One poll that waits for
/// the queue is not enough: when several threads share the device (as the tests do),
/// another thread's poll may have taken this mapping's callback and still be running it
/// when this poll returns, which read the outcome as missing now and then.
fn wait_mapped(device: &::wgpu::Device, pending: &[&MapStatus]) -> Result<(), GpuError> {
    let started = std::time::Instant::now();
    loop {
        device
            .poll(::wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Device(e.to_string()))?;
        let done = |s: &&MapStatus| s.lock().map_or(true, |outcome| outcome.is_some());
        if pending.iter().all(done) || started.elapsed() > MAP_TIMEOUT {
            // A mapping still without an outcome is reported by `read_mapped`.
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Hands the mapped bytes of `buffer` to `read`, then unmaps it.
fn read_mapped(
    buffer: &::wgpu::Buffer,
    status: MapStatus,
    what: &str,
    read: impl FnOnce(&[u8]),
) -> Result<(), GpuError> {
    let outcome = status.lock().ok().and_then(|mut slot| slot.take());
    match outcome {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(GpuError::Device(format!("cannot read {what}: {e}"))),
        None => return Err(GpuError::Device(format!("{what} were never mapped"))),
    }
    {
        let view = buffer
            .slice(..)
            .get_mapped_range()
            .map_err(|e| GpuError::Device(e.to_string()))?;
        read(&view);
    }
    buffer.unmap();
    Ok(())
}

/// The bytes of an f32 slice, for uploads.
fn as_bytes(values: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns, u8 has alignment 1,
    // and the byte length covers exactly the same memory.
    unsafe {
        std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
    }
}

impl Executor for WgpuExecutor {
    fn plan(&self) -> &LaunchPlan {
        &self.plan
    }

    fn device_name(&self) -> String {
        self.gpu.name()
    }

    fn run_into(&mut self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<(), GpuError> {
        check_io(&self.plan, inputs, outputs)?;
        let gpu = &self.gpu;
        for (io, data) in self.plan.inputs.iter().zip(inputs) {
            if !data.is_empty() {
                let (r, offset) = self.placement[io.buffer];
                gpu.queue
                    .write_buffer(self.buffer(r), offset, as_bytes(data));
            }
        }
        let mut encoder = gpu
            .device
            .create_command_encoder(&::wgpu::CommandEncoderDescriptor {
                label: Some("inference"),
            });
        match &self.profiler {
            None => {
                let mut pass = encoder.begin_compute_pass(&::wgpu::ComputePassDescriptor {
                    label: Some("launches"),
                    timestamp_writes: None,
                });
                for i in 0..self.plan.launches.len() {
                    self.dispatch(&mut pass, i);
                }
            }
            Some(profiler) => {
                for i in 0..self.plan.launches.len() {
                    let mut pass = encoder.begin_compute_pass(&::wgpu::ComputePassDescriptor {
                        label: Some(&self.plan.launches[i].step),
                        timestamp_writes: Some(::wgpu::ComputePassTimestampWrites {
                            query_set: &profiler.queries,
                            beginning_of_pass_write_index: Some(2 * i as u32),
                            end_of_pass_write_index: Some(2 * i as u32 + 1),
                        }),
                    });
                    self.dispatch(&mut pass, i);
                }
                let count = 2 * self.plan.launches.len() as u32;
                if count > 0 {
                    encoder.resolve_query_set(&profiler.queries, 0..count, &profiler.resolved, 0);
                    encoder.copy_buffer_to_buffer(
                        &profiler.resolved,
                        0,
                        &profiler.readback,
                        0,
                        u64::from(count) * 8,
                    );
                }
            }
        }
        for (io, &at) in self.plan.outputs.iter().zip(&self.staging_offsets) {
            let bytes = self.plan.buffers[io.buffer].len as u64 * F32;
            if bytes > 0 {
                let (r, offset) = self.placement[io.buffer];
                encoder.copy_buffer_to_buffer(self.buffer(r), offset, &self.staging, at, bytes);
            }
        }
        gpu.queue.submit([encoder.finish()]);
        let outputs_mapped = map_for_reading(&self.staging);
        let timestamps_mapped = self.profiler.as_ref().map(|p| map_for_reading(&p.readback));
        let pending: Vec<&MapStatus> = std::iter::once(&outputs_mapped)
            .chain(timestamps_mapped.as_ref())
            .collect();
        wait_mapped(&gpu.device, &pending)?;
        gpu.take_errors()?;
        read_mapped(&self.staging, outputs_mapped, "the outputs", |bytes| {
            for (out, &at) in outputs.iter_mut().zip(&self.staging_offsets) {
                let bytes = &bytes[at as usize..at as usize + out.len() * F32 as usize];
                for (value, chunk) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *value = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                }
            }
        })?;
        if let (Some(profiler), Some(mapped)) = (&mut self.profiler, timestamps_mapped) {
            let period_ns = f64::from(gpu.queue.get_timestamp_period());
            let times = &mut profiler.times;
            read_mapped(&profiler.readback, mapped, "the timestamps", |bytes| {
                let stamps: Vec<u64> = bytes
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunks")))
                    .collect();
                for (total, pair) in times.iter_mut().zip(stamps.chunks_exact(2)) {
                    let ticks = pair[1].saturating_sub(pair[0]);
                    *total += Duration::from_secs_f64(ticks as f64 * period_ns * 1e-9);
                }
            })?;
        }
        Ok(())
    }

    fn set_profiling(&mut self, on: bool) -> Result<(), GpuError> {
        self.profiler = match on {
            true => Some(Profiler::new(&self.gpu, self.plan.launches.len())?),
            false => None,
        };
        Ok(())
    }

    fn profile(&self) -> Vec<(String, Duration)> {
        self.profiler
            .as_ref()
            .map(|p| profile_by_step(&self.plan, &p.times))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{BufferDecl, Dialect, IoDecl, KernelSource, Launch, PLAN_FORMAT};
    use std::collections::HashMap;

    /// `y = max(x, 0) * scale` over 100 elements, in two launches of two kernels
    /// through an intermediate arena buffer.
    fn relu_scale_plan() -> (LaunchPlan, Constants) {
        let n = 100;
        let relu = "@group(0) @binding(0) var<storage, read_write> x: array<f32>;\n\
                    @group(0) @binding(1) var<storage, read_write> y: array<f32>;\n\
                    @compute @workgroup_size(64)\n\
                    fn main(@builtin(global_invocation_id) id: vec3<u32>) {\n\
                      if (id.x < 100u) { y[id.x] = max(x[id.x], 0.0); }\n\
                    }\n";
        let scale = "@group(0) @binding(0) var<storage, read_write> x: array<f32>;\n\
                     @group(0) @binding(1) var<storage, read> s: array<f32>;\n\
                     @group(0) @binding(2) var<storage, read_write> y: array<f32>;\n\
                     @compute @workgroup_size(64)\n\
                     fn main(@builtin(global_invocation_id) id: vec3<u32>) {\n\
                       if (id.x < 100u) { y[id.x] = x[id.x] * s[id.x]; }\n\
                     }\n";
        let arena = |name: &str, offset| BufferDecl {
            name: name.into(),
            len: n,
            place: Place::Arena { offset },
        };
        let kernel = |name: &str, source: &str, bindings| KernelSource {
            name: name.into(),
            entry: "main".into(),
            source: source.into(),
            workgroup: [64, 1, 1],
            bindings,
        };
        use BindingAccess::{Read, ReadWrite};
        let plan = LaunchPlan {
            format: PLAN_FORMAT,
            dialect: Dialect::Wgsl,
            arena_len: 3 * 128,
            buffers: vec![
                arena("x", 0),
                arena("h", 128),
                BufferDecl {
                    name: "scale".into(),
                    len: n,
                    place: Place::Constant { key: "s".into() },
                },
                arena("y", 256),
            ],
            kernels: vec![
                kernel("relu", relu, vec![ReadWrite, ReadWrite]),
                kernel("scale", scale, vec![ReadWrite, Read, ReadWrite]),
            ],
            launches: vec![
                Launch {
                    step: "h".into(),
                    kernel: 0,
                    args: vec![0, 1],
                    grid: [2, 1, 1],
                },
                Launch {
                    step: "y".into(),
                    kernel: 1,
                    args: vec![1, 2, 3],
                    grid: [2, 1, 1],
                },
            ],
            inputs: vec![IoDecl {
                name: "x".into(),
                shape: vec![4, 25],
                buffer: 0,
            }],
            outputs: vec![IoDecl {
                name: "y".into(),
                shape: vec![4, 25],
                buffer: 3,
            }],
        };
        let scale: Vec<f32> = (0..n).map(|i| 0.5 + i as f32).collect();
        let constants = Constants::from([(
            "s".to_string(),
            crate::Tensor::from_shape_vec(vec![n], scale).unwrap(),
        )]);
        (plan, constants)
    }

    /// The device, or `None` (with a visible line) where no Vulkan driver exists.
    fn device() -> Option<WgpuDevice> {
        match WgpuDevice::open() {
            Ok(d) => Some(d),
            Err(e) if std::env::var_os("BBC_REQUIRE_GPU").is_none() => {
                // Past the harness's capture, so the skip shows in passing runs.
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "SKIPPED: {e}");
                None
            }
            Err(e) => panic!("BBC_REQUIRE_GPU is set but: {e}"),
        }
    }

    #[test]
    fn runs_a_two_launch_plan_and_rejects_bad_kernels() {
        let Some(gpu) = device() else { return };
        let (plan, constants) = relu_scale_plan();
        let mut exe = WgpuExecutor::with_device(&gpu, plan.clone(), &constants).unwrap();
        let x: Vec<f32> = (0..100).map(|i| (i as f32 - 50.0) / 7.0).collect();
        let s = constants["s"].as_slice().unwrap();
        let want: Vec<f32> = x.iter().zip(s).map(|(x, s)| x.max(0.0) * s).collect();
        for _ in 0..2 {
            let inputs = HashMap::from([(
                "x".to_string(),
                crate::Tensor::from_shape_vec(vec![4, 25], x.clone()).unwrap(),
            )]);
            let out = exe.run(&inputs).unwrap();
            assert_eq!(out["y"].shape(), &[4, 25]);
            assert_eq!(out["y"].as_slice().unwrap(), want.as_slice());
        }
        // Profiled runs record each launch in its own timed pass and compute the same.
        exe.set_profiling(true).unwrap();
        let mut out = vec![0.0f32; 100];
        exe.run_into(&[&x], &mut [&mut out]).unwrap();
        assert_eq!(out, want);
        let mut steps: Vec<String> = exe.profile().into_iter().map(|(step, _)| step).collect();
        steps.sort();
        assert_eq!(steps, ["h", "y"]);
        exe.set_profiling(false).unwrap();
        assert!(exe.profile().is_empty());

        let mut short = [0.0f32; 3];
        let err = exe.run_into(&[&x], &mut [&mut short]).unwrap_err();
        assert!(err.to_string().contains("has 3 elements"), "{err}");

        let mut broken = plan.clone();
        broken.kernels[0].source = broken.kernels[0].source.replace("max(", "maxx(");
        let err = WgpuExecutor::with_device(&gpu, broken, &constants)
            .err()
            .unwrap();
        assert!(
            matches!(&err, GpuError::Compile { kernel, .. } if kernel == "relu"),
            "{err}"
        );
        let mut mismatched = plan;
        mismatched.kernels[1].bindings[1] = BindingAccess::ReadWrite;
        let err = WgpuExecutor::with_device(&gpu, mismatched, &constants)
            .err()
            .unwrap();
        assert!(matches!(err, GpuError::Compile { .. }), "{err}");
    }
}
