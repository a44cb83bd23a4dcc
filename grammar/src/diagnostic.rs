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

/// One frame of the instantiation chain: what was being elaborated, and where.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    pub what: String,
    pub span: Span,
    /// A call (`span` is the call site) or a loop iteration (`span` is the loop).
    pub kind: FrameKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Call,
    Iteration,
}

impl Frame {
    /// A block, function or layer instantiated at the call site `span`.
    pub fn call(what: impl Into<String>, span: Span) -> Frame {
        Frame {
            what: what.into(),
            span,
            kind: FrameKind::Call,
        }
    }

    /// One iteration of the loop at `span`.
    pub fn iteration(what: impl Into<String>, span: Span) -> Frame {
        Frame {
            what: what.into(),
            span,
            kind: FrameKind::Iteration,
        }
    }
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
            let link = match frame.kind {
                FrameKind::Call => "called from",
                FrameKind::Iteration => "at",
            };
            notes.push(format!(
                "note: in {} {link} {}",
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

/// Optimal string alignment distance, for "did you mean" hints: Levenshtein (insert, delete,
/// substitute) plus the transposition of two adjacent characters as a single edit, since swapped
/// letters (`rleu` for `relu`) are among the commonest typos. Counts `char`s, not bytes.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Rows i-1, i and i+1 of the usual table: a transposition looks two rows back.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            let mut d = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
            if i > 0 && j > 0 && ca == b[j - 1] && a[i - 1] == cb {
                d = d.min(before[j - 1] + 1);
            }
            cur[j + 1] = d;
        }
        before = std::mem::replace(&mut prev, cur);
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
    fn edit_distance_counts_a_transposition_as_one_edit() {
        assert_eq!(edit_distance("rleu", "relu"), 1);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("modle", "model"), 1);
        // Plain Levenshtein cases are unchanged.
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("relu", "relu"), 0);
        // Optimal string alignment edits no substring twice: `ca` -> `ac` -> `abc` is not allowed.
        assert_eq!(edit_distance("ca", "abc"), 3);
        assert_eq!(
            did_you_mean("rleu", ["relu", "gelu", "linear"]),
            Some("relu")
        );
    }

    #[test]
    fn render_shows_line_caret_and_chain() {
        let mut sm = SourceMap::new();
        let f = sm.add("a.bb", "let x = 1;\nlet y = z;\n");
        let d = Diagnostic::new(Phase::Resolution, "E0201", "unknown name `z`")
            .at(Span::new(f, 19, 20), "not defined")
            .with_chain(vec![Frame::call("block `b`", Span::new(f, 0, 3))]);
        let text = d.render(&sm);
        assert!(text.contains("error[E0201]: unknown name `z`"), "{text}");
        assert!(text.contains("a.bb:2:9"), "{text}");
        assert!(text.contains("in block `b` called from a.bb:1:1"), "{text}");
    }
}
