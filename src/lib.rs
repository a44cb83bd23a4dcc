//! `bbc`: a declarative model-graph compiler for neural-network backbones.
//!
//! This crate is the command-line tool and a thin facade over the pipeline's crates:
//! [`grammar`] (the `.bb` language), [`compiler`] (elaboration, Graph IR, op table,
//! interpreter, weights) and [`runtime`] (tensors and their IO).

pub use bbc_compiler as compiler;
pub use bbc_grammar as grammar;
pub use bbc_runtime as runtime;

use bbc_grammar::{diagnostic::render_all, Diagnostic, SourceMap};

/// Renders diagnostics as `bbc` prints them; without sources, only the messages.
pub fn render(diags: &[Diagnostic], sources: Option<&SourceMap>) -> String {
    match sources {
        Some(s) => render_all(diags, s),
        None => render_all(diags, &SourceMap::new()),
    }
}
