//! `bbc`: a declarative model-graph compiler for neural-network backbones, as a library.
//!
//! Compile a model of a `.bb` spec once, then run it as often as you like, from as many
//! threads as you like:
//!
//! ```
//! # fn main() -> bbc::Result<()> {
//! let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/convnext.bb");
//! let model = bbc::Model::builder()
//!     .model("convnext_test") // a model of the spec (default: its last one)
//!     .dim("H", 64) // size parameters of its input `x: f32[B=1, 3, H=224, W=224]`
//!     .dim("W", 64)
//!     .target(bbc::Target::Cpu) // or Interp, Gpu (Vulkan), Cuda
//!     .weights(bbc::Weights::Seeded(0)) // or File("w.safetensors"), or Tensors(map)
//!     .compile_file(spec)?;
//! println!("{} takes {:?}", model.name(), model.inputs()[0].shape); // [1, 3, 64, 64]
//!
//! let x = ndarray::Array4::<f32>::ones((1, 3, 64, 64));
//! let y = model.run(&[x.view()])?; // one array per output
//! println!("{}: {}", model.outputs()[0].name, bbc::Summary::of(&y[0]).unwrap());
//! # assert_eq!(y[0].shape(), [1, 10]);
//! # Ok(())
//! # }
//! ```
//!
//! - [`CompileOptions`] (also [`Model::builder`]) says what to compile and how; it runs the
//!   whole pipeline ([`CompileOptions::compile_file`], [`CompileOptions::compile_str`]) or
//!   one stage at a time ([`load_spec`], [`CompileOptions::elaborate`],
//!   [`CompileOptions::load_weights`], [`CompileOptions::build`]).
//! - [`Model`] runs on `ndarray` views ([`Model::run`]) or on raw `f32` buffers without
//!   copying them ([`Model::run_into`]); it is `Send + Sync`.
//! - [`Error`] says what went wrong; spec and checkpoint problems keep the compiler's
//!   diagnostics and display them with source snippets, as `bbc` prints them.
//!
//! The crates underneath are re-exported for lower-level work: [`grammar`] (the `.bb`
//! language), [`compiler`] (elaboration, Graph IR, op table, interpreter, weights, passes,
//! code generation) and [`runtime`] (tensors and their IO, kernels, executors).

#![warn(missing_docs)]

mod error;
mod model;
mod options;

pub use error::{Diagnostics, Error, Result};
pub use model::{random_input, Model, StepTime, Summary, TensorInfo};
pub use options::{check_memory, load_spec, parse_spec, CompileOptions, Target, Weights};

pub use bbc_compiler as compiler;
pub use bbc_grammar as grammar;
pub use bbc_runtime as runtime;

/// A tensor: an `f32` array of any rank (`ndarray::ArrayD<f32>`).
pub use bbc_runtime::Tensor;

pub use bbc_compiler::codegen::cpu::plan::{
    compile, CompileError, ExecError, ExecOptions, ExecStats, Executable,
};

use bbc_grammar::{diagnostic::render_all, Diagnostic, SourceMap};

/// Renders diagnostics as `bbc` prints them; without sources, only the messages.
pub fn render(diags: &[Diagnostic], sources: Option<&SourceMap>) -> String {
    match sources {
        Some(s) => render_all(diags, s),
        None => render_all(diags, &SourceMap::new()),
    }
}
