//! `bbc`: a declarative model-graph compiler for neural-network backbones.
//!
//! This crate is the command-line tool and a thin facade over the pipeline's crates:
//! [`grammar`] (the `.bb` language), [`compiler`] (elaboration, Graph IR, op table,
//! interpreter, weights, code generation) and [`runtime`] (tensors, their IO, the kernels and
//! the executor). [`compile`] turns an optimised graph and its weights into an [`Executable`]
//! for this CPU: compile once, [`Executable::run`] many times.

pub use bbc_compiler as compiler;
pub use bbc_grammar as grammar;
pub use bbc_runtime as runtime;

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
