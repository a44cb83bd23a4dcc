//! The launch plan: the contract between GPU code generation and the GPU
//! executors.
//!
//! A [`LaunchPlan`] lists the kernels (source text in one [`Dialect`]), the
//! buffers they bind (slices of one per-inference arena, or constants read
//! from a weights file by key) and the launches in execution order. It is
//! plain data (serde), so a compiled program can be saved, loaded and run by
//! any program that links only this crate. [`LaunchPlan::validate`] is the
//! one check both executors and the loader run before touching a device.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The plan's format version; bumped when the layout changes incompatibly.
pub const PLAN_FORMAT: u32 = 1;

/// Alignment of every arena offset, in f32 elements (256 bytes): the largest
/// storage-buffer offset alignment Vulkan drivers require, and a full cache
/// line pair on CUDA devices.
pub const ARENA_ALIGN: usize = 64;

/// The source language of every kernel in a plan.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// WebGPU Shading Language, run by the wgpu executor.
    Wgsl,
    /// CUDA C++, compiled with NVRTC and run by the CUDA executor.
    Cuda,
}

impl Dialect {
    /// The file extension a kernel of this dialect is saved under.
    pub fn extension(self) -> &'static str {
        match self {
            Dialect::Wgsl => "wgsl",
            Dialect::Cuda => "cu",
        }
    }
}

/// A compiled program for a GPU: buffers, kernels and their launches.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LaunchPlan {
    /// Format version, [`PLAN_FORMAT`].
    pub format: u32,
    /// The language every kernel is written in.
    pub dialect: Dialect,
    /// Length of the per-inference arena, in f32 elements.
    pub arena_len: usize,
    /// Every buffer a launch binds; launches refer to them by index.
    pub buffers: Vec<BufferDecl>,
    /// Distinct kernels (identical sources are deduplicated).
    pub kernels: Vec<KernelSource>,
    /// Kernel launches, in execution order.
    pub launches: Vec<Launch>,
    /// Graph inputs, in order; the caller writes them before the launches.
    pub inputs: Vec<IoDecl>,
    /// Graph outputs, in order; read back after the last launch. Inputs and
    /// outputs live in the arena (an output that is a constant or an input
    /// is copied there by a launch).
    pub outputs: Vec<IoDecl>,
}

/// One buffer: a named run of f32 elements in the arena or a constant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BufferDecl {
    /// Name for diagnostics (the graph value it holds).
    pub name: String,
    /// Length in f32 elements.
    pub len: usize,
    /// Where the elements live.
    pub place: Place,
}

/// Where a buffer's elements live.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    /// A slice of the arena starting at `offset` f32 elements (a multiple of
    /// [`ARENA_ALIGN`]).
    Arena {
        /// Start of the slice in f32 elements.
        offset: usize,
    },
    /// A constant tensor stored in the weights file under `key`.
    Constant {
        /// The tensor's key in the weights file.
        key: String,
    },
}

/// One kernel's source and its binding interface.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct KernelSource {
    /// Unique name within the plan; also the file stem it is saved under.
    pub name: String,
    /// Entry point (WGSL `@compute fn` or CUDA `extern "C" __global__`).
    pub entry: String,
    /// Source text; empty in a saved `plan.json`, where it lives in
    /// `kernels/<name>.<ext>` instead.
    pub source: String,
    /// Workgroup (CUDA: block) size.
    pub workgroup: [u32; 3],
    /// Access of each bound buffer, in binding order (WGSL
    /// `@group(0) @binding(i)`, CUDA parameter `i`, a `float*`).
    pub bindings: Vec<BindingAccess>,
}

/// How a kernel accesses one of its bound buffers.
///
/// WGSL: every binding a launch points at an arena buffer must be
/// `ReadWrite` (declared `var<storage, read_write>`), even if the kernel only
/// reads it. wgpu tracks usage per buffer, not per range, and one dispatch may
/// not use the arena both read-only and read-write; and the shader's access
/// must equal the bind group layout's. Constants may be either.
/// CUDA: `Read` bindings are `const float*`, and constants must be `Read`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BindingAccess {
    /// Read only (`var<storage, read>` / `const float*`).
    Read,
    /// Read and written (`var<storage, read_write>` / `float*`).
    ReadWrite,
}

/// One kernel launch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Launch {
    /// The graph step it computes, for diagnostics and profiles.
    pub step: String,
    /// Index into [`LaunchPlan::kernels`].
    pub kernel: usize,
    /// Index into [`LaunchPlan::buffers`] for each binding, in the kernel's
    /// binding order.
    pub args: Vec<usize>,
    /// Number of workgroups (CUDA: grid of blocks) in each dimension.
    pub grid: [u32; 3],
}

/// A graph input or output and the buffer holding it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct IoDecl {
    /// The graph's name for it.
    pub name: String,
    /// Its shape; the element count equals the buffer's length.
    pub shape: Vec<usize>,
    /// Index into [`LaunchPlan::buffers`].
    pub buffer: usize,
}

impl LaunchPlan {
    /// Checks that every index is in range, arena slices are aligned and
    /// inside the arena, launches bind as many buffers as their kernel
    /// declares, nothing writes a constant, and input/output shapes match
    /// their buffers. Executors rely on it to index without further checks.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != PLAN_FORMAT {
            return Err(format!(
                "unsupported plan format {} (this runtime reads format {PLAN_FORMAT})",
                self.format
            ));
        }
        for (i, buffer) in self.buffers.iter().enumerate() {
            if let Place::Arena { offset } = buffer.place {
                if offset % ARENA_ALIGN != 0 {
                    return Err(format!(
                        "buffer {i} `{}`: arena offset {offset} is not a multiple of {ARENA_ALIGN}",
                        buffer.name
                    ));
                }
                let end = offset.checked_add(buffer.len);
                if end.is_none_or(|end| end > self.arena_len) {
                    return Err(format!(
                        "buffer {i} `{}`: [{offset}, {offset}+{}) exceeds the arena of {} elements",
                        buffer.name, buffer.len, self.arena_len
                    ));
                }
            }
        }
        let mut names = BTreeSet::new();
        for kernel in &self.kernels {
            if !names.insert(kernel.name.as_str()) {
                return Err(format!("kernel name `{}` appears twice", kernel.name));
            }
            if kernel.workgroup.contains(&0) {
                return Err(format!(
                    "kernel `{}`: workgroup size {:?} has a zero dimension",
                    kernel.name, kernel.workgroup
                ));
            }
        }
        for (i, launch) in self.launches.iter().enumerate() {
            let kernel = self.kernels.get(launch.kernel).ok_or_else(|| {
                format!(
                    "launch {i} `{}`: kernel index {} out of range ({} kernels)",
                    launch.step,
                    launch.kernel,
                    self.kernels.len()
                )
            })?;
            if launch.args.len() != kernel.bindings.len() {
                return Err(format!(
                    "launch {i} `{}`: {} arguments for kernel `{}` with {} bindings",
                    launch.step,
                    launch.args.len(),
                    kernel.name,
                    kernel.bindings.len()
                ));
            }
            for (&arg, &access) in launch.args.iter().zip(&kernel.bindings) {
                let buffer = self.buffer(arg).map_err(|e| format!("launch {i}: {e}"))?;
                let constant = matches!(buffer.place, Place::Constant { .. });
                let problem = match (self.dialect, access, constant) {
                    (Dialect::Wgsl, BindingAccess::Read, false) => {
                        "binds arena buffer `{}` read-only (WGSL arena bindings must be read_write)"
                    }
                    (Dialect::Cuda, BindingAccess::ReadWrite, true) => {
                        "binds constant buffer `{}` writable"
                    }
                    _ => continue,
                };
                return Err(format!(
                    "launch {i} `{}`: kernel `{}` {}",
                    launch.step,
                    kernel.name,
                    problem.replace("{}", &buffer.name)
                ));
            }
        }
        for (role, decls) in [("input", &self.inputs), ("output", &self.outputs)] {
            for io in decls {
                let buffer = self
                    .buffer(io.buffer)
                    .map_err(|e| format!("{role} `{}`: {e}", io.name))?;
                let elements = io.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                if elements != Some(buffer.len) {
                    return Err(format!(
                        "{role} `{}`: shape {:?} does not match buffer `{}` of {} elements",
                        io.name, io.shape, buffer.name, buffer.len
                    ));
                }
                if !matches!(buffer.place, Place::Arena { .. }) {
                    return Err(format!(
                        "{role} `{}`: buffer `{}` must live in the arena",
                        io.name, buffer.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// The buffer at `index`, or an error naming the index.
    fn buffer(&self, index: usize) -> Result<&BufferDecl, String> {
        self.buffers.get(index).ok_or_else(|| {
            format!(
                "buffer index {index} out of range ({} buffers)",
                self.buffers.len()
            )
        })
    }

    /// The distinct constant keys the plan reads, in buffer order.
    pub fn constant_keys(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.buffers
            .iter()
            .filter_map(|b| match &b.place {
                Place::Constant { key } if seen.insert(key.as_str()) => Some(key.as_str()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-launch plan: `y = relu(x)` then `z = y + bias`.
    fn sample() -> LaunchPlan {
        LaunchPlan {
            format: PLAN_FORMAT,
            dialect: Dialect::Wgsl,
            arena_len: 3 * ARENA_ALIGN,
            buffers: vec![
                BufferDecl {
                    name: "x".into(),
                    len: 8,
                    place: Place::Arena { offset: 0 },
                },
                BufferDecl {
                    name: "y".into(),
                    len: 8,
                    place: Place::Arena {
                        offset: ARENA_ALIGN,
                    },
                },
                BufferDecl {
                    name: "bias".into(),
                    len: 8,
                    place: Place::Constant { key: "b".into() },
                },
                BufferDecl {
                    name: "z".into(),
                    len: 8,
                    place: Place::Arena {
                        offset: 2 * ARENA_ALIGN,
                    },
                },
            ],
            kernels: vec![
                KernelSource {
                    name: "relu".into(),
                    entry: "main".into(),
                    source: "src".into(),
                    workgroup: [64, 1, 1],
                    bindings: vec![BindingAccess::ReadWrite, BindingAccess::ReadWrite],
                },
                KernelSource {
                    name: "add".into(),
                    entry: "main".into(),
                    source: "src".into(),
                    workgroup: [64, 1, 1],
                    bindings: vec![
                        BindingAccess::ReadWrite,
                        BindingAccess::Read,
                        BindingAccess::ReadWrite,
                    ],
                },
            ],
            launches: vec![
                Launch {
                    step: "relu".into(),
                    kernel: 0,
                    args: vec![0, 1],
                    grid: [1, 1, 1],
                },
                Launch {
                    step: "add".into(),
                    kernel: 1,
                    args: vec![1, 2, 3],
                    grid: [1, 1, 1],
                },
            ],
            inputs: vec![IoDecl {
                name: "x".into(),
                shape: vec![2, 4],
                buffer: 0,
            }],
            outputs: vec![IoDecl {
                name: "z".into(),
                shape: vec![2, 4],
                buffer: 3,
            }],
        }
    }

    fn rejected(plan: &LaunchPlan, needle: &str) {
        let err = plan.validate().expect_err("plan should be rejected");
        assert!(err.contains(needle), "`{err}` lacks `{needle}`");
    }

    #[test]
    fn valid_plan_passes_and_round_trips_through_json() {
        let plan = sample();
        plan.validate().unwrap();
        let json = serde_json::to_string(&plan).unwrap();
        assert!(json.contains("\"dialect\":\"wgsl\""), "{json}");
        assert!(json.contains("\"read_write\""), "{json}");
        let back: LaunchPlan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plan);
        assert_eq!(plan.constant_keys(), vec!["b"]);
    }

    #[test]
    fn misaligned_and_out_of_arena_buffers_are_rejected() {
        let mut plan = sample();
        plan.buffers[1].place = Place::Arena { offset: 3 };
        rejected(&plan, "not a multiple");
        let mut plan = sample();
        plan.buffers[3].len = ARENA_ALIGN + 1;
        plan.outputs[0].shape = vec![ARENA_ALIGN + 1];
        rejected(&plan, "exceeds the arena");
        let mut plan = sample();
        plan.buffers[3].place = Place::Arena {
            offset: usize::MAX - 63,
        };
        rejected(&plan, "exceeds the arena");
    }

    #[test]
    fn bad_indices_and_binding_counts_are_rejected() {
        let mut plan = sample();
        plan.launches[0].kernel = 7;
        rejected(&plan, "kernel index 7 out of range");
        let mut plan = sample();
        plan.launches[1].args.pop();
        rejected(&plan, "2 arguments for kernel `add` with 3 bindings");
        let mut plan = sample();
        plan.launches[1].args[0] = 9;
        rejected(&plan, "buffer index 9 out of range");
        let mut plan = sample();
        plan.outputs[0].buffer = 4;
        rejected(&plan, "buffer index 4 out of range");
    }

    #[test]
    fn semantic_mismatches_are_rejected() {
        let mut plan = sample();
        plan.format = 2;
        rejected(&plan, "unsupported plan format 2");
        let mut plan = sample();
        plan.kernels[0].bindings[0] = BindingAccess::Read;
        rejected(&plan, "binds arena buffer `x` read-only");
        let mut plan = sample();
        plan.dialect = Dialect::Cuda;
        plan.validate().unwrap();
        plan.launches[1].args = vec![1, 3, 2];
        rejected(&plan, "binds constant buffer `bias` writable");
        let mut plan = sample();
        plan.inputs[0].shape = vec![3, 3];
        rejected(&plan, "does not match buffer `x`");
        let mut plan = sample();
        plan.kernels[1].name = "relu".into();
        rejected(&plan, "appears twice");
        let mut plan = sample();
        plan.kernels[0].workgroup = [0, 1, 1];
        rejected(&plan, "zero dimension");
    }
}
