//! GPU code generation: WGSL (run by wgpu) and CUDA C (compiled by NVRTC at run time) from
//! the Kernel IR, and the launch-plan builder ([`plan::build`]) that turns an optimised
//! graph into a runtime [`LaunchPlan`](bbc_runtime::gpu::LaunchPlan).
//!
//! One printer (`source.rs`) walks the Kernel IR for both dialects; `wgsl.rs` and `cuda.rs`
//! only say how each spells declarations, loops, calls and bindings. Loop kernels
//! (`loops.rs`) map grid iterations to invocations; contractions (`contraction.rs`) are
//! tiled matrix products in workgroup memory with the epilogue fused, or a gather for a
//! transposed convolution; CUDA products may use tensor cores (`tensor_core.rs`).
//!
//! Every size is baked into the source as a literal, so a kernel needs no uniforms: its
//! bindings are its buffers, in Kernel IR order.

pub mod plan;

mod contraction;
mod cuda;
mod loops;
mod source;
mod tensor_core;
mod wgsl;

pub use bbc_runtime::gpu::{BindingAccess, Dialect};

use crate::kernel::{Body, Kernel};
use source::{Printer, Syntax};

/// Code generation choices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuOptions {
    /// CUDA only: run products whose sizes allow it on tensor cores (TF32 inputs, f32
    /// accumulation). TF32 keeps 10 mantissa bits, so results differ from the interpreter
    /// by about 1e-3 relative: off by default and in the correctness tests, on for
    /// benchmarking (`bbc bench --target cuda` turns it on).
    pub tensor_cores: bool,
}

/// Why a graph or kernel has no GPU code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuError {
    /// Nodes the Kernel IR cannot lower (or the GPU cannot run), each with its reason.
    Unsupported(Vec<Unsupported>),
    /// Preparing the parameter-only values failed (a missing or mis-shaped weight).
    Weights(String),
    /// The arena could not be planned.
    Arena(String),
    /// A kernel exceeds what the generated code can address (32-bit indices, grid limits).
    TooLarge(String),
}

/// One node without GPU code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    pub node: String,
    /// The op name, or `fused KIND` for a group.
    pub op: String,
    pub reason: String,
}

impl std::fmt::Display for GpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuError::Unsupported(nodes) => {
                write!(f, "{} node(s) have no GPU kernel:", nodes.len())?;
                for n in nodes {
                    write!(f, "\n  `{}` ({}): {}", n.node, n.op, n.reason)?;
                }
                Ok(())
            }
            GpuError::Weights(e) => write!(f, "cannot prepare the weights: {e}"),
            GpuError::Arena(e) => write!(f, "cannot plan the GPU arena: {e}"),
            GpuError::TooLarge(e) => write!(f, "too large for a GPU kernel: {e}"),
        }
    }
}

impl std::error::Error for GpuError {}

/// The entry point's name in every generated kernel.
pub const ENTRY: &str = "bbc_kernel";

/// One kernel's source and how to launch it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emitted {
    pub source: String,
    /// Invocations per workgroup (CUDA: threads per block).
    pub workgroup: [u32; 3],
    /// Workgroups per launch (CUDA: blocks).
    pub grid: [u32; 3],
}

/// The bindings' access when every buffer lives in one arena: WebGPU forbids binding one
/// buffer both read-only and read-write in a dispatch, so a WGSL kernel declares every
/// arena binding `read_write`; CUDA declares its inputs `const`.
pub fn arena_bindings(kernel: &Kernel, dialect: Dialect) -> Vec<BindingAccess> {
    (0..kernel.buffers.len())
        .map(|i| {
            if i == kernel.output() || dialect == Dialect::Wgsl {
                BindingAccess::ReadWrite
            } else {
                BindingAccess::Read
            }
        })
        .collect()
}

/// The source of `kernel` in `dialect`, binding buffer `i` with `bindings[i]`.
pub fn emit(
    kernel: &Kernel,
    dialect: Dialect,
    bindings: &[BindingAccess],
    opts: &GpuOptions,
) -> Result<Emitted, GpuError> {
    let limit = i32::MAX as usize;
    if let Some(b) = kernel.buffers.iter().find(|b| b.len() > limit) {
        return Err(GpuError::TooLarge(format!(
            "buffer `{}` has {} elements; GPU kernels index with 32-bit integers",
            b.name,
            b.len()
        )));
    }
    let syntax: &dyn Syntax = match dialect {
        Dialect::Wgsl => &wgsl::Wgsl,
        Dialect::Cuda => &cuda::Cuda,
    };
    let printer = Printer::new(syntax, kernel);
    match &kernel.body {
        Body::Loops { grid, .. } => {
            if grid.extent > limit {
                return Err(GpuError::TooLarge(format!(
                    "a grid of {} iterations",
                    grid.extent
                )));
            }
            Ok(loops::emit(printer, ENTRY, bindings))
        }
        Body::Contraction(c) => match c.layout {
            crate::kernel::ProductLayout::Col2im { .. } => {
                Ok(contraction::col2im_gather(printer, c, ENTRY, bindings))
            }
            crate::kernel::ProductLayout::Dense { .. } => {
                if dialect == Dialect::Cuda && opts.tensor_cores && tensor_core::applies(c) {
                    return Ok(tensor_core::emit(printer, c, ENTRY, bindings));
                }
                // CUDA's larger register file and shared memory take a 128 × 128 tile.
                let large = (dialect == Dialect::Cuda).then_some(contraction::Tile {
                    bm: 128,
                    bn: 128,
                    bk: 8,
                    tm: 8,
                    tn: 8,
                    splits: 1,
                });
                // WebGPU's default limits (256 invocations, 16 KiB); on CUDA, half a block's
                // threads and its 48 KiB of static shared memory.
                let limits = match dialect {
                    Dialect::Cuda => contraction::Limits {
                        threads: 512,
                        shared_floats: 12 * 1024,
                    },
                    Dialect::Wgsl => contraction::Limits {
                        threads: 256,
                        shared_floats: 4 * 1024,
                    },
                };
                let tile = contraction::Tile::choose(c, large, limits);
                contraction::tiled(printer, c, tile, ENTRY, bindings)
            }
        },
    }
}
