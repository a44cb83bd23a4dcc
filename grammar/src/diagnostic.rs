//! The one diagnostic type shared by every phase, and its rendering.
//!
//! Library code builds [`Diagnostic`]s and never prints; the CLI renders them with
//! [`Diagnostic::render`], which draws the source line with a caret and appends the
//! instantiation chain ("in block `x` called from file:line:col") as notes.

use crate::source::{SourceMap, Span};
use codespan_reporting::diagnostic as cs;
use codespan_reporting::term;

/// The five phases of checking, each with its own range of error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// E01xx: the text does not match the grammar.
    Syntax,
    /// E02xx: unknown or duplicate names, imports.
    Resolution,
    /// E03xx: compile-time evaluation, types, asserts, parameter naming.
    Elaboration,
    /// E04xx: tensor shapes and op arguments.
    Shape,
    /// E05xx: checkpoints against the parameter table.
    Weights,
}

/// A secondary location with its own message.
#[derive(Clone, Debug)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

/// One frame of the instantiation chain: what was being elaborated, and the call site.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    pub what: String,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub code: &'static str,
    pub phase: Phase,
    pub message: String,
    /// Where the problem is; `None` only for problems with no source (e.g. a missing file).
    pub span: Option<Span>,
    /// Text shown under the caret.
    pub label: String,
    pub secondary: Vec<Label>,
    pub notes: Vec<String>,
    pub help: Option<String>,
    /// Innermost first: the block instantiations that led to `span`.
    pub chain: Vec<Frame>,
}

impl Diagnostic {
    pub fn new(phase: Phase, code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            phase,
            message: message.into(),
            span: None,
            label: String::new(),
            secondary: Vec::new(),
            notes: Vec::new(),
            help: None,
            chain: Vec::new(),
        }
    }

    pub fn at(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.span = Some(span);
        self.label = label.into();
        self
    }

    pub fn with_secondary(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.secondary.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn with_chain(mut self, chain: Vec<Frame>) -> Diagnostic {
        self.chain = chain;
        self
    }

    /// Renders as plain text (no colours), the way `bbc` prints it.
    pub fn render(&self, sources: &SourceMap) -> String {
        let mut out = term::termcolor::NoColor::new(Vec::new());
        let config = term::Config::default();
        let diag = self.to_codespan(sources);
        if term::emit_to_write_style(&mut out, &config, sources.files(), &diag).is_err() {
            return format!("error[{}]: {}\n", self.code, self.message);
        }
        String::from_utf8_lossy(&out.into_inner()).into_owned()
    }

    fn to_codespan(&self, sources: &SourceMap) -> cs::Diagnostic<usize> {
        let mut labels = Vec::new();
        if let Some(span) = self.span {
            labels.push(cs::Label::primary(span.file, span.range()).with_message(&self.label));
        }
        for l in &self.secondary {
            labels.push(cs::Label::secondary(l.span.file, l.span.range()).with_message(&l.message));
        }
        let mut notes = self.notes.clone();
        for frame in &self.chain {
            notes.push(format!(
                "note: in {} called from {}",
                frame.what,
                sources.location(frame.span)
            ));
        }
        if let Some(help) = &self.help {
            notes.push(format!("help: {help}"));
        }
        cs::Diagnostic::error()
            .with_code(self.code)
            .with_message(&self.message)
            .with_labels(labels)
            .with_notes(notes)
    }
}

/// Renders a list of diagnostics, separated the way compilers do, with a summary line.
pub fn render_all(diags: &[Diagnostic], sources: &SourceMap) -> String {
    let mut s = String::new();
    for d in diags {
        s.push_str(&d.render(sources));
    }
    if diags.len() > 1 {
        s.push_str(&format!("error: aborting due to {} errors\n", diags.len()));
    }
    s
}

/// Levenshtein distance, for "did you mean" hints.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate to `name`, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, c.len()))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_pick_the_nearest_name() {
        assert_eq!(did_you_mean("conv2", ["conv2d", "linear"]), Some("conv2d"));
        assert_eq!(did_you_mean("xyz", ["conv2d", "linear"]), None);
    }

    #[test]
    fn render_shows_line_caret_and_chain() {
        let mut sm = SourceMap::new();
        let f = sm.add("a.bb", "let x = 1;\nlet y = z;\n");
        let d = Diagnostic::new(Phase::Resolution, "E0201", "unknown name `z`")
            .at(Span::new(f, 19, 20), "not defined")
            .with_chain(vec![Frame {
                what: "block `b`".into(),
                span: Span::new(f, 0, 3),
            }]);
        let text = d.render(&sm);
        assert!(text.contains("error[E0201]: unknown name `z`"), "{text}");
        assert!(text.contains("a.bb:2:9"), "{text}");
        assert!(text.contains("in block `b` called from a.bb:1:1"), "{text}");
    }
}
