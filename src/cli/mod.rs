//! The `bbc` subcommands (one module each) and what they share: the spec/model/dims options
//! and the pass options (turned into the library's `CompileOptions`, which loads, elaborates
//! and compiles), the error type the binary turns into exit code 1 (the library's errors
//! worded for the command line), and small output helpers.

/// Like `eprintln!`, but a closed stderr (`bbc ... 2>&1 | head`) is not a crash.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use note;

/// Writes `text` to stderr as it is, ignoring a closed stream.
pub fn to_stderr(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}

pub mod bench;
pub mod check;
pub mod compile;
pub mod graph;
pub mod ir;
pub mod models;
pub mod run;
pub mod stats;
pub mod weights;

use bbc::compiler::elab::{Elaborated, Program};
use bbc::grammar::{Diagnostic, SourceMap};
use bbc::CompileOptions;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A user error: the complete text to print on stderr (exit code 1).
#[derive(Debug)]
pub struct CliError(pub String);

impl CliError {
    /// A plain `error: ...` message.
    pub fn msg(message: impl std::fmt::Display) -> CliError {
        CliError(format!("error: {message}\n"))
    }

    /// Compiler diagnostics, rendered with source snippets where the sources are known.
    pub fn diags(diags: &[Diagnostic], sources: Option<&SourceMap>) -> CliError {
        CliError(bbc::render(diags, sources))
    }
}

impl From<bbc::Error> for CliError {
    /// The library's errors, worded for the command line (its flags rather than the
    /// library's methods).
    fn from(e: bbc::Error) -> CliError {
        match e {
            bbc::Error::Spec(d) | bbc::Error::Weights(d) => CliError(d.render()),
            bbc::Error::Memory(m) => CliError::msg(format!(
                "{m}\nhelp: use smaller size parameters, e.g. --dim H=... --dim W=..."
            )),
            bbc::Error::Compile { target, message } if target.dialect().is_some() => {
                CliError::msg(format!("cannot compile for --target {target}: {message}"))
            }
            bbc::Error::Compile { message, .. } => CliError::msg(message),
            e => CliError::msg(e),
        }
    }
}

pub type CliResult = Result<(), CliError>;

/// The spec and which model of it to build; shared by every spec command.
#[derive(Args, Debug, Clone)]
pub struct SpecArgs {
    /// The `.bb` spec file.
    #[arg(value_name = "SPEC")]
    pub spec: PathBuf,

    /// Model or variant to build [default: the last model in the file].
    #[arg(short, long, value_name = "NAME")]
    pub model: Option<String>,

    /// Binds a size parameter (a named dim of an `input`), e.g. `--dim B=8`; repeatable.
    #[arg(short = 'd', long = "dim", value_name = "NAME=VALUE", value_parser = parse_dim)]
    pub dims: Vec<(String, i64)>,

    /// Sets a parameter of the model, e.g. `--arg phi=3` for `model v(phi: int) = base(...)`;
    /// on a variant also one of the model it builds on, replacing what the variant fixes (the
    /// command line is the outermost setting). The value is a literal (int, float,
    /// true/false, "string", [list]); repeatable.
    #[arg(long = "arg", value_name = "NAME=VALUE", value_parser = parse_arg)]
    pub args: Vec<(String, String)>,
}

/// Parses `NAME=VALUE` for `--arg`; the value is checked when the model is built.
fn parse_arg(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("expected NAME=VALUE (e.g. phi=3), got `{s}`")),
    }
}

/// Which optimisation passes to run; shared by the commands that build a graph to use.
#[derive(Args, Debug, Clone, Default)]
pub struct OptArgs {
    /// Optimisation level: 0 none, 1 cleanup, 2 everything (`-O2`) [default: 0; 2 where the
    /// graph is compiled (`run`, `bench`, `compile`)].
    #[arg(short = 'O', value_name = "LEVEL", value_parser = clap::value_parser!(u8).range(0..=2))]
    pub level: Option<u8>,

    /// Run exactly these passes, in order (comma-separated), instead of a level's pipeline.
    #[arg(
        long,
        value_name = "PASS,...",
        value_delimiter = ',',
        conflicts_with = "level"
    )]
    pub passes: Option<Vec<String>>,

    /// Leave this pass out of the level's pipeline; repeatable.
    #[arg(long = "skip-pass", value_name = "PASS", conflicts_with = "passes")]
    pub skip: Vec<String>,
}

impl OptArgs {
    /// The passes to run (level 0 unless given), checking every name given.
    pub fn pipeline(&self) -> Result<Vec<Box<dyn bbc::compiler::passes::Pass>>, CliError> {
        self.pipeline_or(0)
    }

    /// The passes to run, at `default_level` unless a level is given.
    pub fn pipeline_or(
        &self,
        default_level: u8,
    ) -> Result<Vec<Box<dyn bbc::compiler::passes::Pass>>, CliError> {
        let opts = CompileOptions::new().opt_level(self.level.unwrap_or(default_level));
        Ok(self.apply(opts).pipeline()?)
    }

    /// `opts` with the level (where given) and the pass list and skips of these options.
    pub fn apply(&self, opts: CompileOptions) -> CompileOptions {
        let opts = match self.level {
            Some(level) => opts.opt_level(level),
            None => opts,
        };
        let opts = match &self.passes {
            Some(names) => opts.passes(names.iter().cloned()),
            None => opts,
        };
        self.skip
            .iter()
            .fold(opts, |opts, name| opts.skip_pass(name.clone()))
    }
}

/// Parses `NAME=VALUE` with an identifier name and an integer value.
fn parse_dim(s: &str) -> Result<(String, i64), String> {
    let Some((name, value)) = s.split_once('=') else {
        return Err(format!("expected NAME=VALUE (e.g. B=8), got `{s}`"));
    };
    let name = name.trim();
    let ident = name
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_alphanumeric() || c == '_');
    if !ident {
        return Err(format!("`{name}` is not a size-parameter name"));
    }
    let value: i64 = value.trim().parse().map_err(|e: std::num::ParseIntError| {
        use std::num::IntErrorKind::{NegOverflow, PosOverflow};
        match e.kind() {
            PosOverflow | NegOverflow => format!(
                "the value of `{name}` is out of range: `{value}` is not in 1..={}",
                i64::MAX
            ),
            _ => format!("the value of `{name}` must be an integer, got `{value}`"),
        }
    })?;
    Ok((name.to_string(), value))
}

/// Loads a spec and its imports; errors are rendered against the files that were read.
pub fn load(spec: &Path) -> Result<Program, CliError> {
    Ok(bbc::load_spec(spec)?)
}

/// Elaborates `model` (or the default) of a loaded program.
pub fn elaborate(
    program: &Program,
    model: Option<&str>,
    spec: &SpecArgs,
) -> Result<Elaborated, CliError> {
    let opts = spec.options()?;
    let opts = match model {
        Some(name) => opts.model(name),
        None => opts,
    };
    Ok(opts.elaborate(program)?)
}

impl SpecArgs {
    /// Loads the spec and elaborates the selected model.
    pub fn build(&self) -> Result<(Program, Elaborated), CliError> {
        let program = load(&self.spec)?;
        let model = elaborate(&program, self.model.as_deref(), self)?;
        Ok((program, model))
    }

    /// Compile options with the model, size parameters and model arguments bound. A
    /// repeated `--dim` or `--arg` is refused: on a command line it is a mistake rather
    /// than an override.
    pub fn options(&self) -> Result<CompileOptions, CliError> {
        let repeated = |flag: &str, names: Vec<&String>| -> CliResult {
            match names
                .iter()
                .enumerate()
                .find(|(i, name)| names[..*i].contains(name))
            {
                Some((_, name)) => Err(CliError::msg(format!(
                    "{flag} {name} is given more than once"
                ))),
                None => Ok(()),
            }
        };
        repeated("--dim", self.dims.iter().map(|(n, _)| n).collect())?;
        repeated("--arg", self.args.iter().map(|(n, _)| n).collect())?;
        let opts = match &self.model {
            Some(name) => CompileOptions::new().model(name.clone()),
            None => CompileOptions::new(),
        };
        let opts = self
            .dims
            .iter()
            .fold(opts, |opts, (name, value)| opts.dim(name.clone(), *value));
        Ok(self.args.iter().fold(opts, |opts, (name, value)| {
            opts.arg(name.clone(), value.clone())
        }))
    }
}

/// Writes to stdout; a closed pipe (`bbc ir x.bb | head`) ends the output quietly.
pub fn print(text: &str) -> CliResult {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::msg(format!("cannot write to stdout: {e}"))),
    }
}

/// Writes a text file atomically: a temporary file in the same folder, then a rename.
pub fn write_text(path: &Path, text: &str) -> CliResult {
    bbc::runtime::check_writable(path).map_err(CliError::msg)?;
    bbc::runtime::write_atomic(path, text.as_bytes()).map_err(|e| write_failed(path, e))
}

/// The files a spec command reads, each with what it is: the spec and what it imports.
pub fn spec_files(program: &Program) -> Vec<(String, PathBuf)> {
    let sources = &program.sources;
    (0..sources.len())
        .map(|id| {
            let what = if id == 0 {
                "the spec"
            } else {
                "a file the spec imports"
            };
            (what.to_string(), PathBuf::from(sources.name(id)))
        })
        .collect()
}

/// Whether `a` and `b` are the same existing file, through hard or symbolic links too.
fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(a), Ok(b)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        a.dev() == b.dev() && a.ino() == b.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        false
    }
}

/// Refuses to write `output` over a file the command reads (`reads`, each with what it
/// is): the input would be lost, or checked and then replaced.
pub fn refuse_overwriting(output: &Path, reads: &[(String, PathBuf)]) -> CliResult {
    match reads.iter().find(|(_, input)| same_file(output, input)) {
        Some((what, input)) => Err(CliError::msg(format!(
            "cannot write `{}`: it is {what} (`{}`), which this command reads\n\
             help: write the output to another file",
            output.display(),
            input.display()
        ))),
        None => Ok(()),
    }
}

/// Refuses to replace the folder `dir` while it holds a file the command reads (`reads`,
/// each with what it is): replacing the folder would delete it. Where `dir` is not a
/// folder, refuses it as [`refuse_overwriting`] does.
pub fn refuse_replacing(dir: &Path, reads: &[(String, PathBuf)]) -> CliResult {
    let Some(dir_real) = std::fs::canonicalize(dir).ok().filter(|d| d.is_dir()) else {
        return refuse_overwriting(dir, reads);
    };
    let inside =
        |input: &Path| std::fs::canonicalize(input).is_ok_and(|real| real.starts_with(&dir_real));
    match reads.iter().find(|(_, input)| inside(input)) {
        Some((what, input)) => Err(CliError::msg(format!(
            "cannot write `{}`: it holds {what} (`{}`), which this command reads; writing \
             the folder would delete it\nhelp: write the output to another folder",
            dir.display(),
            input.display()
        ))),
        None => Ok(()),
    }
}

/// A write that failed after [`bbc::runtime::check_writable`] passed (a full disk, a
/// permission), worded as that check words its refusals.
pub fn write_failed(path: &Path, e: bbc::runtime::IoError) -> CliError {
    match e {
        bbc::runtime::IoError::Io { source, .. } => {
            CliError::msg(format!("cannot write `{}`: {source}", path.display()))
        }
        other => CliError::msg(other.to_string()),
    }
}

/// Refuses to run a model whose weights, inputs and peak activations cannot fit in the
/// memory this machine has available, instead of letting an allocation abort the process.
pub fn check_memory(graph: &bbc::compiler::ir::Graph) -> CliResult {
    Ok(bbc::check_memory(graph)?)
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A shape as `[1, 3, 224, 224]`.
pub fn shape(dims: &[usize]) -> String {
    let dims: Vec<String> = dims.iter().map(usize::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// Lays out rows as left-aligned columns (right-aligned where `right[i]`), two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            if right.get(i).copied().unwrap_or(false) {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s.push('\n');
        s
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut out = line(&header);
    let total: usize = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_parse() {
        assert_eq!(parse_dim("B=8"), Ok(("B".to_string(), 8)));
        assert!(parse_dim("B").is_err());
        assert!(parse_dim("B=x").is_err());
        assert!(parse_dim("=3").is_err());
        assert!(parse_dim("1x=3").is_err());
        let too_big = parse_dim("B=99999999999999999999").unwrap_err();
        assert!(too_big.contains("out of range"), "{too_big}");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(3_695_520), "3,695,520");
    }
}
