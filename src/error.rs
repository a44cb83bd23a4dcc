//! The facade's error type: one enum for everything that can go wrong between a spec and an
//! inference, with the compiler's diagnostics (and the sources they point into) kept intact.

use crate::Target;
use bbc_grammar::{diagnostic::render_all, Diagnostic, SourceMap};
use std::fmt;

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a spec could not be compiled or a model could not run.
///
/// Displaying an error gives the text `bbc` prints for it: diagnostics come with their
/// source snippets and locations.
///
/// ```
/// let err = bbc::CompileOptions::new()
///     .compile_str("broken.bb", "bb 0.1;\nmodel m( {\n")
///     .unwrap_err();
/// let bbc::Error::Spec(diags) = &err else { panic!("{err}") };
/// assert!(diags.diagnostics()[0].code.starts_with("E01")); // a syntax error
/// assert!(err.to_string().contains("broken.bb:2:")); // rendered with its location
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The spec cannot be read or parsed, or the model cannot be built from it (an unknown
    /// model, a size parameter it does not declare, a shape error, ...).
    #[error("{0}")]
    Spec(Diagnostics),
    /// The weights do not fit the model (missing, unexpected or mis-shaped entries), or the
    /// checkpoint cannot be read.
    #[error("{0}")]
    Weights(Diagnostics),
    /// An option is invalid: an unknown pass or target, an optimisation level above 2, or an
    /// option the chosen target does not have.
    #[error("{0}")]
    Options(String),
    /// The model's weights, inputs and activations need more memory than this machine has
    /// available (checked before anything is allocated).
    #[error("{0}\nhelp: use smaller size parameters")]
    Memory(String),
    /// The inputs or output buffers given to a run do not match the model: their number,
    /// names, shapes or lengths.
    #[error("{0}")]
    Input(String),
    /// The model cannot be compiled for its target.
    #[error("cannot compile for the {target} target: {message}")]
    Compile {
        /// The target that was asked for.
        target: Target,
        /// What went wrong.
        message: String,
    },
    /// A GPU target was asked for but there is no device for it: no Vulkan adapter, no CUDA
    /// driver or NVRTC library, or no CUDA device.
    #[error("{0}")]
    GpuUnavailable(String),
    /// An inference failed on its device.
    #[error("{0}")]
    Run(String),
}

/// Compiler diagnostics together with the source files they point into.
pub struct Diagnostics {
    diagnostics: Vec<Diagnostic>,
    sources: SourceMap,
}

impl Diagnostics {
    /// Diagnostics about the files in `sources` (which may be empty for problems that have
    /// no source location, such as an unreadable file).
    pub fn new(diagnostics: Vec<Diagnostic>, sources: SourceMap) -> Diagnostics {
        Diagnostics {
            diagnostics,
            sources,
        }
    }

    /// Diagnostics about files of `sources`, which are copied so the error owns them.
    pub(crate) fn copied(diagnostics: Vec<Diagnostic>, sources: &SourceMap) -> Diagnostics {
        Diagnostics::new(diagnostics, copy_sources(sources))
    }

    /// The diagnostics, in the order the compiler reported them.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// The source files the diagnostics' spans point into.
    pub fn sources(&self) -> &SourceMap {
        &self.sources
    }

    /// The diagnostics rendered exactly as `bbc` prints them: each with its source snippet,
    /// then a count when there are several; ends with a newline.
    pub fn render(&self) -> String {
        render_all(&self.diagnostics, &self.sources)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.render().trim_end())
    }
}

impl fmt::Debug for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A copy of `sources` with the same file ids (a [`SourceMap`] numbers files in the order
/// they were added).
fn copy_sources(sources: &SourceMap) -> SourceMap {
    let mut copy = SourceMap::new();
    for file in 0..sources.len() {
        copy.add(sources.name(file), sources.text(file));
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use bbc_grammar::{Phase, Span};

    #[test]
    fn copied_sources_keep_file_ids_so_spans_still_render() {
        let mut sources = SourceMap::new();
        sources.add("a.bb", "first\n");
        let b = sources.add("b.bb", "bb 0.1;\nmodel m {}\n");
        let span = Span::new(b, 8, 13);
        let diag = Diagnostic::new(Phase::Elaboration, "E0000", "problem").at(span, "here");
        let original = render_all(std::slice::from_ref(&diag), &sources);
        let copied = Diagnostics::copied(vec![diag], &sources);
        assert_eq!(copied.render(), original);
        assert!(original.contains("b.bb:2:1"), "{original}");
        assert_eq!(copied.to_string(), original.trim_end());
    }
}
