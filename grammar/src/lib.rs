//! `bbc-grammar`: the `.bb` language's surface. It owns the pest grammar (`bb.pest`), the
//! owned [`ast`], the [`parser`] that builds it, source files and spans ([`source`]), and the
//! one [`diagnostic`] type that every later phase reports with. pest never leaks out of here.

pub mod ast;
pub mod diagnostic;
pub mod parser;
pub mod source;

pub use diagnostic::{did_you_mean, Diagnostic, Frame, FrameKind, Phase};
pub use parser::parse;
pub use source::{FileId, Location, SourceMap, Span};
