//! `bbc-runtime`: tensors and their IO.
//!
//! - [`Tensor`]: the one tensor type, a dynamic-rank f32 array.
//! - [`checkpoint`]: safetensors reading (F32/F16/BF16 as f32, header-only
//!   listing) and atomic F32 saving.
//! - [`npy`]: `.npy` reading (float32/float64) and atomic writing.
//! - [`image`]: PNG reading (as [1, C, H, W] in [0, 1]) and atomic 8-bit writing.
//! - [`rng`]: seeded, order-independent random initialisation.
//! - [`error`]: [`IoError`], naming the file and the problem.
//! - [`pool`]: the persistent thread pool kernels run on.
//! - [`kernels`]: GEMM, convolution and depthwise kernels with fused epilogues.
//! - [`arena`]: the activation-memory planner and aligned buffers.
//! - [`exec`]: the executor running a compiled plan over the arena on the pool.
//! - [`desc`]: the serialisable description of a CPU plan, resolved into one.
//! - [`aot`]: ahead-of-time compiled models: descriptor, weights file, loader.
//! - [`libcalls`]: the functions generated code calls by symbol name.
//! - [`program_dir`]: atomic writing of a compiled program's folder.
//! - [`gpu`]: the GPU launch plan and its executors.
//! - [`peak`]: this machine's FMA peak, measured.
//!
//! This crate never prints and returns errors instead of panicking on bad
//! input files.

pub mod aot;
pub mod arena;
mod atomic;
pub mod checkpoint;
pub mod desc;
pub mod error;
pub mod exec;
pub mod gpu;
pub mod image;
pub mod kernels;
pub mod libcalls;
pub mod npy;
pub mod peak;
pub mod pool;
pub mod program_dir;
pub mod rng;

pub use atomic::{check_parent, check_writable, write_atomic};
pub use checkpoint::{save, save_with_metadata, Checkpoint, DType, EntryInfo};
pub use error::IoError;
pub use image::{read_png, write_png};
pub use npy::{read_npy, write_npy};
pub use rng::Rng;

/// A dynamic-rank array of f32 values, in row-major (C) order unless noted.
pub type Tensor = ndarray::ArrayD<f32>;
