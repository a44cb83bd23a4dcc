//! The parser: `.bb` text to the owned [`File`](crate::ast::File).
//!
//! Three stages, each of which must survive any input without panicking or hanging:
//! 1. [`prescan`], a tiny lexer that rejects what pest handles badly: unterminated strings
//!    (pest would only say what it expected at the end of the file) and nesting deeper than
//!    [`MAX_NESTING`] (bounded recursion for pest and for the builder below). It also records
//!    which brackets are stray or never closed, to explain pest's errors;
//! 2. pest with `bb.pest`; its errors become `E01xx` diagnostics with human token names and,
//!    where a common slip is recognisable, a hint (unmatched bracket, `=` for `==`, a misspelt
//!    item keyword);
//! 3. [`Builder`], which turns pairs into the AST, folding operator sequences iteratively and
//!    checking literals (integer range, escapes).
//!
//! Separately, [`check_version`] rejects a version line other than `bb 0.1;` (E0107).

use crate::ast::*;
use crate::diagnostic::{edit_distance, Diagnostic, Phase};
use crate::source::{FileId, SourceMap, Span};
use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::Parser as _;

#[derive(pest_derive::Parser)]
#[grammar = "bb.pest"]
struct BbParser;

/// Deepest bracket/brace/interpolation nesting accepted (checked before pest runs).
pub const MAX_NESTING: usize = 200;
/// Deepest syntax tree accepted. Counts nested expressions and, conservatively, every operator
/// of a flat chain, so later phases can recurse over the tree without exhausting the stack.
pub const MAX_TREE_DEPTH: usize = 600;

type P<'i> = Pair<'i, Rule>;
/// Boxed: the error path is cold and `Diagnostic` is large.
type R<T> = Result<T, Box<Diagnostic>>;

fn fail<T>(d: Diagnostic) -> R<T> {
    Err(Box::new(d))
}

/// Parses file `file` of `sources`. Reports the first syntax error of the file, preceded by an
/// unsupported version line if there is one (a newer language may explain the syntax error).
pub fn parse(sources: &SourceMap, file: FileId) -> Result<File, Vec<Diagnostic>> {
    let text = sources.text(file);
    let version = check_version(text, file);
    match (version, with_big_stack(|| parse_text(text, file))) {
        (None, Ok(f)) => Ok(f),
        (None, Err(d)) => Err(vec![*d]),
        (Some(v), Ok(_)) => Err(vec![v]),
        (Some(v), Err(d)) => Err(vec![v, *d]),
    }
}

/// The only language version this parser understands.
pub const LANGUAGE_VERSION: &str = "0.1";

/// E0107 if the file starts with a version line other than `bb 0.1;`. Parses just that line, so
/// it works even when the rest of the file does not parse.
fn check_version(text: &str, file: FileId) -> Option<Diagnostic> {
    let start = skip_trivia(text, 0);
    let line = BbParser::parse(Rule::version, text.get(start..)?).ok()?;
    let num = line.flatten().find(|p| p.as_rule() == Rule::version_num)?;
    if num.as_str() == LANGUAGE_VERSION {
        return None;
    }
    let span = Span::new(
        file,
        start + num.as_span().start(),
        start + num.as_span().end(),
    );
    Some(
        Diagnostic::new(
            Phase::Syntax,
            "E0107",
            format!("unsupported language version `{}`", num.as_str()),
        )
        .at(span, "unsupported version")
        .with_help(format!("this bbc understands `bb {LANGUAGE_VERSION}`")),
    )
}

/// The offset of the first code character at or after `pos` (skipping whitespace and comments).
fn skip_trivia(text: &str, mut pos: usize) -> usize {
    let b = text.as_bytes();
    while pos < b.len() {
        match b[pos] {
            b' ' | b'\t' | b'\r' | b'\n' => pos += 1,
            b'#' => {
                while pos < b.len() && b[pos] != b'\n' {
                    pos += 1;
                }
            }
            _ => break,
        }
    }
    pos
}

/// Runs `f` on a thread with a generous stack: pest needs several frames per nesting level,
/// and callers (test harness threads) may have small stacks. Falls back to the current thread
/// if no thread can be spawned.
fn with_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    const STACK: usize = 64 << 20;
    let slot = std::sync::Mutex::new(Some(f));
    let take = || slot.lock().ok().and_then(|mut g| g.take());
    let on_thread = std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("bbc-parse".into())
            .stack_size(STACK)
            .spawn_scoped(scope, || take().map(|f| f()));
        match handle.map(|h| h.join()) {
            Ok(Ok(v)) => v,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => None,
        }
    });
    match on_thread.or_else(|| take().map(|f| f())) {
        Some(v) => v,
        None => unreachable!("the parse closure is taken exactly once"),
    }
}

fn parse_text(text: &str, file: FileId) -> R<File> {
    let brackets = prescan(text, file)?;
    let mut pairs = BbParser::parse(Rule::file, text)
        .map_err(|e| Box::new(syntax_error(&e, text, file, &brackets)))?;
    let mut b = Builder { file, depth: 0 };
    let top = pairs
        .next()
        .ok_or_else(|| internal(Span::new(file, 0, 0)))?;
    b.file(top)
}

// ------------------------------------------------------------------------------- prescan

/// What the prescan learned about bracket balance, for explaining pest's errors: pest only says
/// which token it expected where it stopped, never which bracket is to blame.
#[derive(Default)]
struct Brackets {
    /// Offsets of closing brackets that close nothing, in source order.
    stray: Vec<usize>,
    /// Offsets of opening brackets that are never closed, in source order.
    unclosed: Vec<usize>,
}

/// An open context of the prescan.
enum Ctx {
    /// An opening `(`, `[` or `{` at this offset.
    Bracket(usize),
    /// Inside `{...}` of a template string that started at this offset.
    Interp(usize),
}

/// Finds unterminated strings (E0102) and excessive nesting (E0104) with a minimal lexer that
/// knows comments, strings, escapes and `{expr}` interpolation, and records bracket balance.
///
/// Matching is forgiving, the way an editor highlights brackets: a closer pops down to the
/// nearest opener of its own kind (the openers it skips are unclosed), and a closer with no such
/// opener is stray and pops nothing. So in `{ f(x)) }` the second `)` is the stray one, not the
/// `}` that a plain "pop whatever is on top" count would blame.
fn prescan(text: &str, file: FileId) -> R<Brackets> {
    let b = text.as_bytes();
    let mut stack: Vec<Ctx> = Vec::new();
    let mut brackets = Brackets::default();
    // (start offset, raw) of the string being scanned, if any.
    let mut in_str: Option<(usize, bool)> = None;
    // The previous code token, to know whether a string is raw (no interpolation).
    let mut prev: &str = "";
    let mut i = 0;
    let too_deep = |i: usize| {
        Diagnostic::new(
            Phase::Syntax,
            "E0104",
            format!("nesting too deep (more than {MAX_NESTING} levels)"),
        )
        .at(
            Span::new(file, i, i + 1),
            "this bracket is too deeply nested",
        )
        .with_help("split the expression with `let` bindings")
    };
    while i < b.len() {
        if let Some((start, raw)) = in_str {
            match b[i] {
                b'\\' => {
                    if matches!(b.get(i + 1), None | Some(b'\n')) {
                        return fail(unterminated(text, file, start));
                    }
                    i += 2;
                }
                b'\n' => return fail(unterminated(text, file, start)),
                b'"' => {
                    in_str = None;
                    prev = "";
                    i += 1;
                }
                b'{' | b'}' if !raw && b.get(i + 1) == Some(&b[i]) => i += 2,
                b'{' if !raw => {
                    stack.push(Ctx::Interp(start));
                    if stack.len() > MAX_NESTING {
                        return fail(too_deep(i));
                    }
                    in_str = None;
                    prev = "";
                    i += 1;
                }
                _ => i += 1,
            }
            continue;
        }
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                let raw = matches!(prev, "import" | "rename" | "ignore" | "=>");
                in_str = Some((i, raw));
                i += 1;
            }
            b'(' | b'[' | b'{' => {
                stack.push(Ctx::Bracket(i));
                if stack.len() > MAX_NESTING {
                    return fail(too_deep(i));
                }
                prev = "";
                i += 1;
            }
            close @ (b')' | b']' | b'}') => {
                let open = opener_of(close);
                // The nearest opener this closer can close; an interpolation is a wall except
                // for the `}` that ends it (a bracket cannot close across a string boundary).
                let target = stack.iter().rposition(|c| match c {
                    Ctx::Bracket(at) => b[*at] == open,
                    Ctx::Interp(_) => true,
                });
                match target.map(|t| (t, &stack[t])) {
                    Some((t, Ctx::Interp(start))) if close == b'}' => {
                        in_str = Some((*start, false));
                        close_down_to(&mut stack, t, &mut brackets.unclosed);
                    }
                    Some((t, Ctx::Bracket(_))) => {
                        close_down_to(&mut stack, t, &mut brackets.unclosed)
                    }
                    _ => brackets.stray.push(i),
                }
                prev = "";
                i += 1;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' => {
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                prev = text.get(s..i).unwrap_or("");
            }
            b'=' if b.get(i + 1) == Some(&b'>') => {
                prev = "=>";
                i += 2;
            }
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            _ => {
                prev = "";
                i += 1;
            }
        }
    }
    if let Some((start, _)) = in_str {
        return fail(unterminated(text, file, start));
    }
    for c in &stack {
        match c {
            // End of file inside `{...}` of a template: the string itself is unterminated.
            Ctx::Interp(start) => return fail(unterminated(text, file, *start)),
            Ctx::Bracket(at) => brackets.unclosed.push(*at),
        }
    }
    brackets.unclosed.sort_unstable();
    Ok(brackets)
}

/// Pops `stack` down to index `t` (inclusive), recording the brackets above `t` as unclosed.
fn close_down_to(stack: &mut Vec<Ctx>, t: usize, unclosed: &mut Vec<usize>) {
    for c in stack.drain(t..).skip(1) {
        if let Ctx::Bracket(at) = c {
            unclosed.push(at);
        }
    }
}

/// The opening bracket that `close` closes.
fn opener_of(close: u8) -> u8 {
    match close {
        b')' => b'(',
        b']' => b'[',
        _ => b'{',
    }
}

/// The closing bracket that `open` needs.
fn closer_of(open: u8) -> u8 {
    match open {
        b'(' => b')',
        b'[' => b']',
        _ => b'}',
    }
}

fn unterminated(text: &str, file: FileId, start: usize) -> Diagnostic {
    let end = text[start..].find('\n').map_or(text.len(), |n| start + n);
    Diagnostic::new(Phase::Syntax, "E0102", "unterminated string")
        .at(Span::new(file, start, end), "this string is never closed")
        .with_help("close it with `\"` on the same line; strings cannot span lines (write `\\n`)")
}

// ------------------------------------------------------------------------------- pest errors

fn syntax_error(
    err: &pest::error::Error<Rule>,
    text: &str,
    file: FileId,
    brackets: &Brackets,
) -> Diagnostic {
    let pos = match err.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    }
    .min(text.len());
    let positives = match &err.variant {
        ErrorVariant::ParsingError { positives, .. } => positives,
        // pest's own call/stack limits: only reachable with pathological nesting.
        ErrorVariant::CustomError { message } => {
            return Diagnostic::new(Phase::Syntax, "E0104", "nesting too deep")
                .at(
                    Span::new(file, pos, pos),
                    format!("parser gave up here ({message})"),
                )
                .with_help("split the expression with `let` bindings");
        }
    };
    let (found, found_len, found_kw) = describe_found(text, pos);
    let found_span = Span::new(file, pos, pos + found_len);

    // A closer that closes nothing: whatever pest expected instead, the bracket is the mistake.
    if brackets.stray.contains(&pos) {
        let close = char::from(text.as_bytes()[pos]);
        let open = char::from(opener_of(text.as_bytes()[pos]));
        return Diagnostic::new(Phase::Syntax, "E0101", format!("unmatched `{close}`"))
            .at(
                found_span,
                format!("this `{close}` has no matching `{open}`"),
            )
            .with_help(format!("remove it, or add the matching `{open}` earlier"));
    }

    let mut names: Vec<&'static str> = Vec::new();
    for &r in positives {
        if let Some(n) = expected_name(r) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    // Concrete tokens first, descriptions after, "end of file" last.
    names.sort_by_key(|n| match *n {
        "end of file" => 2,
        n if n.starts_with('`') => 0,
        _ => 1,
    });
    let expected = join_or(&names);

    let names_a_name = names.iter().any(|n| {
        matches!(
            *n,
            "an identifier"
                | "a pattern"
                | "a parameter"
                | "an expression"
                | "an argument"
                | "a dimension"
        )
    });
    if let (Some(kw), true) = (found_kw, names_a_name) {
        return Diagnostic::new(
            Phase::Syntax,
            "E0106",
            format!("expected {expected}, found keyword `{kw}`"),
        )
        .at(
            found_span,
            format!("`{kw}` is a keyword and cannot be used as a name"),
        )
        .with_help(format!("choose another name, e.g. `{kw}_`"));
    }

    let message = if names.is_empty() {
        format!("unexpected {found}")
    } else {
        format!("expected {expected}, found {found}")
    };
    let mut d = Diagnostic::new(Phase::Syntax, "E0101", message);
    // Pest stops where a closer was due (often at the end of the file, or at the next item);
    // the bracket that needed it can be far above, so point at it too.
    if let Some(&open) = brackets.unclosed.iter().rev().find(|&&at| at < pos) {
        let close = char::from(closer_of(text.as_bytes()[open]));
        if names.contains(&format!("`{close}`").as_str()) {
            let open_char = char::from(text.as_bytes()[open]);
            d = d.with_secondary(
                Span::new(file, open, open + 1),
                format!("this `{open_char}` is never closed"),
            );
        }
    }

    let found_word =
        found_kw.is_none() && text[pos..].starts_with(|c: char| c.is_ascii_alphabetic());
    if found_word && names.contains(&ITEM) {
        if let Some(kw) = item_keyword_typo(&text[pos..pos + found_len]) {
            return d
                .at(found_span, format!("expected {expected}"))
                .with_help(format!("did you mean `{kw}`?"));
        }
    }
    // A common spelling of a type the language names otherwise (`string` for `str`).
    if found_word && names.contains(&"a type") {
        if let Some(ty) = type_spelling(&text[pos..pos + found_len]) {
            return d
                .at(found_span, format!("expected {expected}"))
                .with_help(format!(
                    "this type is spelled `{ty}`; the types are `int`, `float`, `bool`, `str`, \
                     `layer`, `tensor[...]`, `[T]` and tuples"
                ));
        }
    }
    // An operator after a tag: the tag binds loosest, so it ends the expression.
    if names.contains(&"an operator") && ends_with_tag(&text[..pos]) {
        return d.at(found_span, format!("expected {expected}")).with_help(
            "a tag `@\"...\"` binds looser than every operator but `|>`, so only `|>` can \
                 follow it; parenthesise the tagged value: `(conv2d(x, out=4, k=1) @\"c\") + x`",
        );
    }
    // A letter outside ASCII where a name could start: identifiers are ASCII only.
    if text[pos..].starts_with(|c: char| !c.is_ascii() && c.is_alphabetic()) {
        return d
            .at(found_span, format!("expected {expected}"))
            .with_help("names are ASCII letters, digits and `_` (not starting with a digit)");
    }
    if is_single_eq(&text[pos..]) && positives.contains(&Rule::op_eq) && in_condition(text, pos) {
        return d
            .at(found_span, format!("expected {expected}"))
            .with_help("did you mean `==`?");
    }
    if names.contains(&"`;`") {
        // A forgotten `;` is noticed on the next line; point where it belongs instead.
        let prev_end = prev_token_end(text, pos);
        if text
            .get(prev_end..pos)
            .is_some_and(|gap| gap.contains('\n'))
        {
            return d
                .at(
                    Span::new(file, prev_end, prev_end),
                    format!("expected {expected}"),
                )
                .with_help("add `;` here to end the statement");
        }
        return d
            .at(found_span, format!("expected {expected}"))
            .with_help("a `;` may be missing before this");
    }
    if names.is_empty() {
        d.at(found_span, "unexpected here")
    } else {
        d.at(found_span, format!("expected {expected}"))
    }
}

/// How "an item" reads in "expected ...".
const ITEM: &str = "an item (`import`, `let`, `fn`, `block` or `model`)";

/// The item keyword that `word` is probably a typo of (`modle`, `blokc`, `improt`).
///
/// Within edit distance 2, but never more than half the keyword: otherwise any short name at
/// item level (`x = 1;`) would be "corrected" to `fn`, and `def` to `let`.
fn item_keyword_typo(word: &str) -> Option<&'static str> {
    ["model", "block", "fn", "let", "import"]
        .into_iter()
        .map(|kw| (edit_distance(word, kw), kw))
        .filter(|&(d, kw)| d <= 2 && 2 * d <= kw.len())
        .min_by_key(|&(d, _)| d)
        .map(|(_, kw)| kw)
}

/// The language's name for a type spelled as in other languages, if `word` is one.
fn type_spelling(word: &str) -> Option<&'static str> {
    Some(match word {
        "string" | "String" | "Str" => "str",
        "integer" | "Int" | "i32" | "i64" | "usize" => "int",
        "Float" | "f32" | "f64" | "double" => "float",
        "boolean" | "Bool" => "bool",
        "Tensor" => "tensor[...]",
        "Layer" | "module" | "Module" => "layer",
        _ => return None,
    })
}

/// Whether `before` (the text before an error) ends with a tag, `@"..."` or `@_`.
fn ends_with_tag(before: &str) -> bool {
    let before = before.trim_end();
    let Some(at) = before.rfind('@') else {
        return false;
    };
    let label = before[at + 1..].trim_start();
    label == "_"
        || (label.len() >= 2
            && label.starts_with('"')
            && label.ends_with('"')
            && !label[1..label.len() - 1].contains('"'))
}

/// Whether `rest` starts with a lone `=` (not `==` or `=>`).
fn is_single_eq(rest: &str) -> bool {
    rest.starts_with('=') && !rest.starts_with("==") && !rest.starts_with("=>")
}

/// Whether `pos` is inside a condition, where `=` is a likely slip for `==`: a heuristic that
/// looks back to the start of the statement (the last `;`, `{` or `}`) for `if`, `assert`, `&&`
/// or `||`. Strings are not skipped; a wrong guess only costs a superfluous hint.
fn in_condition(text: &str, pos: usize) -> bool {
    let before = &text[..pos];
    let stmt = before
        .rfind([';', '{', '}'])
        .map_or(before, |i| &before[i + 1..]);
    stmt.contains("&&")
        || stmt.contains("||")
        || stmt
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w == "if" || w == "assert")
}

/// How a rule reads in "expected ..." (None: not worth mentioning).
fn expected_name(r: Rule) -> Option<&'static str> {
    use Rule::*;
    Some(match r {
        semi => "`;`",
        comma => "`,`",
        colon => "`:`",
        lparen | params => "`(`",
        rparen => "`)`",
        lbrack => "`[`",
        rbrack => "`]`",
        lbrace | body => "`{`",
        rbrace => "`}`",
        arrow => "`->`",
        fat_arrow => "`=>`",
        assign_eq => "`=`",
        kw_as => "`as`",
        kw_in => "`in`",
        kw_else => "`else`",
        kw_import => "`import`",
        kw_let => "`let`",
        kw_fn => "`fn`",
        kw_block => "`block`",
        kw_model => "`model`",
        kw_if => "`if`",
        kw_for => "`for`",
        kw_tensor => "`tensor`",
        tag_none => "`_`",
        pipe_op | op_or | op_and | op_eq | op_ne | op_le | op_ge | op_lt | op_gt | op_range
        | op_concat | op_add | op_sub | op_pow | op_mul | op_floordiv | op_div | op_mod | tag
        | call_args | index | field => "an operator",
        expr | chain | unary | postfix | if_expr | seq_expr | paren | list | int | float
        | lit_true | lit_false | lit_none | op_neg | op_not => "an expression",
        ident | dim_bare => "an identifier",
        pattern => "a pattern",
        ty | ty_tensor | ty_list | ty_tuple | ty_name => "a type",
        stmt => "a statement",
        // `file` replaces its children's attempts when nothing at all parsed.
        item | file => ITEM,
        param => "a parameter",
        arg | arg_kw | arg_spread => "an argument",
        input_dim | dim_named => "a dimension",
        string | raw_string => "a string",
        comp_for => "`for`",
        comp_if => "`if`",
        decl_kind => "`param`, `buffer` or `const`",
        EOI => "end of file",
        _ => return None,
    })
}

fn join_or(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// Describes the text at `pos` for "found ...": (description, byte length, keyword if any).
fn describe_found(text: &str, pos: usize) -> (String, usize, Option<&str>) {
    let rest = text.get(pos..).unwrap_or("");
    let Some(c) = rest.chars().next() else {
        return ("end of file".into(), 0, None);
    };
    if c.is_ascii_alphanumeric() || c == '_' {
        let len = rest
            .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
            .unwrap_or(rest.len());
        let word = &rest[..len];
        if KEYWORDS.contains(&word) {
            return (format!("keyword `{word}`"), len, Some(word));
        }
        return (format!("`{word}`"), len, None);
    }
    if c == '"' {
        return ("a string".into(), 1, None);
    }
    const OPS: [&str; 13] = [
        "|>", "||", "&&", "==", "!=", "<=", ">=", "..", "++", "**", "//", "->", "=>",
    ];
    if let Some(op) = OPS.iter().find(|op| rest.starts_with(**op)) {
        return (format!("`{op}`"), op.len(), None);
    }
    if c.is_whitespace() || c.is_control() {
        return (format!("{c:?}"), c.len_utf8(), None);
    }
    (format!("`{c}`"), c.len_utf8(), None)
}

/// Words that can never be identifiers.
pub const KEYWORDS: [&str; 24] = [
    "import", "as", "let", "fn", "block", "model", "input", "output", "param", "buffer", "const",
    "for", "in", "if", "else", "scope", "assert", "return", "seq", "rename", "ignore", "true",
    "false", "none",
];

/// End of the last token before `pos` (skipping whitespace and comments), approximately:
/// only used to place the caret of a missing `;`.
fn prev_token_end(text: &str, pos: usize) -> usize {
    let mut last = 0;
    let mut in_str = false;
    let mut in_comment = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if i >= pos {
            break;
        }
        if in_comment {
            in_comment = c != '\n';
            continue;
        }
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            last = i + c.len_utf8();
            continue;
        }
        match c {
            '#' => in_comment = true,
            c if c.is_whitespace() => {}
            '"' => {
                in_str = true;
                last = i + 1;
            }
            _ => last = i + c.len_utf8(),
        }
    }
    last
}

fn internal(span: Span) -> Box<Diagnostic> {
    Box::new(
        Diagnostic::new(
            Phase::Syntax,
            "E0101",
            "internal parser error: unexpected syntax tree",
        )
        .at(span, "while reading this"),
    )
}

// ------------------------------------------------------------------------------- builder

/// Punctuation and keywords: needed by the grammar and its error messages, not by the AST.
fn is_token(r: Rule) -> bool {
    use Rule::*;
    matches!(
        r,
        semi | comma
            | colon
            | lparen
            | rparen
            | lbrack
            | rbrack
            | lbrace
            | rbrace
            | arrow
            | fat_arrow
            | assign_eq
            | EOI
            | kw_bb
            | kw_import
            | kw_as
            | kw_let
            | kw_fn
            | kw_block
            | kw_model
            | kw_input
            | kw_output
            | kw_param
            | kw_buffer
            | kw_const
            | kw_for
            | kw_in
            | kw_if
            | kw_else
            | kw_scope
            | kw_assert
            | kw_return
            | kw_seq
            | kw_rename
            | kw_ignore
            | kw_tensor
    )
}

/// Whether `p` has a direct child of rule `r` (tokens included).
fn has_child(p: &P<'_>, r: Rule) -> bool {
    p.clone().into_inner().any(|c| c.as_rule() == r)
}

/// The non-token children of a pair, consumed in order.
struct Kids<'i> {
    items: std::vec::IntoIter<P<'i>>,
    span: Span,
}

impl<'i> Kids<'i> {
    fn next(&mut self) -> R<P<'i>> {
        self.items.next().ok_or_else(|| internal(self.span))
    }

    fn peek(&self) -> Option<Rule> {
        self.items.as_slice().first().map(|p| p.as_rule())
    }

    fn take_if(&mut self, r: Rule) -> Option<P<'i>> {
        if self.peek() == Some(r) {
            self.items.next()
        } else {
            None
        }
    }

    fn rest(self) -> std::vec::IntoIter<P<'i>> {
        self.items
    }
}

struct Builder {
    file: FileId,
    /// Current syntax-tree depth (see [`MAX_TREE_DEPTH`]).
    depth: usize,
}

impl Builder {
    fn span(&self, p: &P<'_>) -> Span {
        let s = p.as_span();
        Span::new(self.file, s.start(), s.end())
    }

    fn kids<'i>(&self, p: P<'i>) -> Kids<'i> {
        let span = self.span(&p);
        let items: Vec<_> = p.into_inner().filter(|c| !is_token(c.as_rule())).collect();
        Kids {
            items: items.into_iter(),
            span,
        }
    }

    fn enter(&mut self, n: usize, span: Span) -> R<()> {
        self.depth += n;
        if self.depth > MAX_TREE_DEPTH {
            return fail(
                Diagnostic::new(
                    Phase::Syntax,
                    "E0104",
                    format!("nesting too deep (syntax tree deeper than {MAX_TREE_DEPTH} levels)"),
                )
                .at(span, "in this expression")
                .with_help("split the expression with `let` bindings"),
            );
        }
        Ok(())
    }

    fn leave(&mut self, n: usize) {
        self.depth = self.depth.saturating_sub(n);
    }

    fn ident(&self, p: P<'_>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    // ---------------------------------------------------------------- items

    fn file(&mut self, p: P<'_>) -> R<File> {
        let mut version = None;
        let mut items = Vec::new();
        for c in self.kids(p).rest() {
            match c.as_rule() {
                Rule::version => {
                    let num = self.kids(c).next()?;
                    version = Some((num.as_str().to_string(), self.span(&num)));
                }
                Rule::item => items.push(self.item(c)?),
                _ => return Err(internal(self.span(&c))),
            }
        }
        Ok(File { version, items })
    }

    fn item(&mut self, p: P<'_>) -> R<Item> {
        let span = self.span(&p);
        let inner = self.kids(p).next()?;
        match inner.as_rule() {
            Rule::import_item => {
                let mut k = self.kids(inner);
                let (path, path_span) = self.raw(k.next()?)?;
                let alias = k.take_if(Rule::ident).map(|i| self.ident(i));
                Ok(Item::Import {
                    path,
                    path_span,
                    alias,
                    span,
                })
            }
            Rule::let_stmt => {
                let (pat, value) = self.binding(inner)?;
                Ok(Item::Let { pat, value, span })
            }
            Rule::fn_item => {
                let mut k = self.kids(inner);
                let name = self.ident(k.next()?);
                let params = self.params(k.next()?)?;
                let ret = match k.take_if(Rule::ty) {
                    Some(t) => Some(self.ty(t)?),
                    None => None,
                };
                let body = self.expr(k.next()?)?;
                Ok(Item::Fn(FnDef {
                    name,
                    params,
                    ret,
                    body,
                    span,
                }))
            }
            Rule::block_item => {
                let mut k = self.kids(inner);
                let name = self.ident(k.next()?);
                let params = self.params(k.next()?)?;
                let ret = match k.take_if(Rule::ty) {
                    Some(t) => Some(self.ty(t)?),
                    None => None,
                };
                let body = self.body(k.next()?)?;
                Ok(Item::Block(BlockDef {
                    name,
                    params,
                    ret,
                    body,
                    span,
                }))
            }
            Rule::model_item => {
                let mut k = self.kids(inner);
                let name = self.ident(k.next()?);
                let params = match k.take_if(Rule::params) {
                    Some(ps) => self.params(ps)?,
                    None => Vec::new(),
                };
                let next = k.next()?;
                if next.as_rule() == Rule::body {
                    let body = self.body(next)?;
                    return Ok(Item::Model(ModelDef {
                        name,
                        params,
                        body,
                        span,
                    }));
                }
                let base = self.ident(next);
                let args = self.call_args(k.next()?)?;
                Ok(Item::Variant(ModelVariant {
                    name,
                    params,
                    base,
                    args,
                    span,
                }))
            }
            _ => Err(internal(span)),
        }
    }

    fn params(&mut self, p: P<'_>) -> R<Vec<ParamDecl>> {
        let mut out = Vec::new();
        for param in self.kids(p).rest() {
            let span = self.span(&param);
            let mut k = self.kids(param);
            let name = self.ident(k.next()?);
            let ty = match k.take_if(Rule::ty) {
                Some(t) => Some(self.ty(t)?),
                None => None,
            };
            let default = match k.take_if(Rule::expr) {
                Some(e) => Some(self.expr(e)?),
                None => None,
            };
            out.push(ParamDecl {
                name,
                ty,
                default,
                span,
            });
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- types

    fn ty(&mut self, p: P<'_>) -> R<TypeExpr> {
        let span = self.span(&p);
        self.enter(1, span)?;
        let inner = self.kids(p).next()?;
        let kind = match inner.as_rule() {
            Rule::ty_name => match inner.as_str() {
                "int" => TypeKind::Int,
                "float" => TypeKind::Float,
                "bool" => TypeKind::Bool,
                "str" => TypeKind::Str,
                "layer" => TypeKind::Layer,
                _ => return Err(internal(span)),
            },
            Rule::ty_tensor => {
                let has_dims = has_child(&inner, Rule::lbrack);
                let dims = self
                    .kids(inner)
                    .rest()
                    .map(|e| self.expr(e))
                    .collect::<R<Vec<_>>>()?;
                TypeKind::Tensor(has_dims.then_some(dims))
            }
            Rule::ty_list => TypeKind::List(Box::new(self.ty(self.kids(inner).next()?)?)),
            Rule::ty_tuple => {
                let comma = has_child(&inner, Rule::comma);
                let mut tys = self
                    .kids(inner)
                    .rest()
                    .map(|t| self.ty(t))
                    .collect::<R<Vec<_>>>()?;
                if tys.len() == 1 && !comma {
                    // `(T)` is just `T`.
                    self.leave(1);
                    return tys.pop().ok_or_else(|| internal(span));
                }
                TypeKind::Tuple(tys)
            }
            _ => return Err(internal(span)),
        };
        self.leave(1);
        Ok(TypeExpr { kind, span })
    }

    // ---------------------------------------------------------------- statements

    fn body(&mut self, p: P<'_>) -> R<Vec<Stmt>> {
        let span = self.span(&p);
        self.enter(1, span)?;
        let stmts = self
            .kids(p)
            .rest()
            .map(|s| self.stmt(s))
            .collect::<R<Vec<_>>>()?;
        self.leave(1);
        Ok(stmts)
    }

    /// `let`/assign shape: pattern, value.
    fn binding(&mut self, p: P<'_>) -> R<(Pattern, Expr)> {
        let mut k = self.kids(p);
        let pat = self.pattern(k.next()?)?;
        let value = self.expr(k.next()?)?;
        Ok((pat, value))
    }

    fn stmt(&mut self, p: P<'_>) -> R<Stmt> {
        let span = self.span(&p);
        let inner = self.kids(p).next()?;
        let kind = self.stmt_kind(inner)?;
        Ok(Stmt { kind, span })
    }

    fn stmt_kind(&mut self, inner: P<'_>) -> R<StmtKind> {
        let span = self.span(&inner);
        Ok(match inner.as_rule() {
            Rule::input_stmt => {
                let mut k = self.kids(inner);
                let name = self.ident(k.next()?);
                let dtype = self.ident(k.next()?);
                let mut dims = Vec::new();
                for d in k.rest() {
                    let dspan = self.span(&d);
                    let dim = self.kids(d).next()?;
                    dims.push(match dim.as_rule() {
                        Rule::dim_named => {
                            let mut dk = self.kids(dim);
                            let name = self.ident(dk.next()?);
                            let value = self.expr(dk.next()?)?;
                            InputDim {
                                name: Some(name),
                                value: Some(value),
                                span: dspan,
                            }
                        }
                        Rule::dim_bare => InputDim {
                            name: Some(self.ident(self.kids(dim).next()?)),
                            value: None,
                            span: dspan,
                        },
                        _ => InputDim {
                            name: None,
                            value: Some(self.expr(dim)?),
                            span: dspan,
                        },
                    });
                }
                StmtKind::Input { name, dtype, dims }
            }
            Rule::output_stmt => {
                let mut k = self.kids(inner);
                let name = self.ident(k.next()?);
                let value = self.expr(k.next()?)?;
                StmtKind::Output { name, value }
            }
            Rule::let_stmt => {
                let (pat, value) = self.binding(inner)?;
                StmtKind::Let { pat, value }
            }
            Rule::assign_stmt => {
                let (pat, value) = self.binding(inner)?;
                StmtKind::Assign { pat, value }
            }
            Rule::for_stmt => {
                let mut k = self.kids(inner);
                let pat = self.pattern(k.next()?)?;
                let iter = self.expr(k.next()?)?;
                let path = match k.take_if(Rule::string) {
                    Some(s) => Some(self.template(s)?),
                    None => None,
                };
                let body = self.body(k.next()?)?;
                StmtKind::For {
                    pat,
                    iter,
                    path,
                    body,
                }
            }
            Rule::if_stmt => {
                self.enter(1, span)?;
                let mut k = self.kids(inner);
                let cond = self.expr(k.next()?)?;
                let then = self.body(k.next()?)?;
                let otherwise = match k.items.next() {
                    None => None,
                    Some(e) if e.as_rule() == Rule::if_stmt => {
                        let espan = self.span(&e);
                        let kind = self.stmt_kind(e)?;
                        Some(vec![Stmt { kind, span: espan }])
                    }
                    Some(b) => Some(self.body(b)?),
                };
                self.leave(1);
                StmtKind::If {
                    cond,
                    then,
                    otherwise,
                }
            }
            Rule::scope_stmt => {
                let mut k = self.kids(inner);
                let path = self.template(k.next()?)?;
                let body = self.body(k.next()?)?;
                StmtKind::Scope { path, body }
            }
            Rule::assert_stmt => {
                let mut k = self.kids(inner);
                let cond = self.expr(k.next()?)?;
                let message = match k.take_if(Rule::expr) {
                    Some(m) => Some(self.expr(m)?),
                    None => None,
                };
                StmtKind::Assert { cond, message }
            }
            Rule::return_stmt => StmtKind::Return {
                value: self.expr(self.kids(inner).next()?)?,
            },
            Rule::decl_stmt => {
                let mut kind = None;
                let mut names = Vec::new();
                let mut dims = Vec::new();
                let mut init = None;
                let mut after_eq = false;
                // Walk with tokens: the expressions before `=` are dims, the one after is init.
                for c in inner.into_inner() {
                    match c.as_rule() {
                        Rule::decl_kind => {
                            kind = match c.as_str() {
                                "param" => Some(DeclKind::Param),
                                "buffer" => Some(DeclKind::Buffer),
                                "const" => Some(DeclKind::Const),
                                _ => None,
                            }
                        }
                        Rule::ident => names.push(self.ident(c)),
                        Rule::assign_eq => after_eq = true,
                        Rule::expr if after_eq => init = Some(self.expr(c)?),
                        Rule::expr => dims.push(self.expr(c)?),
                        _ => {}
                    }
                }
                let mut names = names.into_iter();
                let (Some(kind), Some(name), Some(dtype)) = (kind, names.next(), names.next())
                else {
                    return Err(internal(span));
                };
                StmtKind::Decl {
                    kind,
                    name,
                    dtype,
                    dims,
                    init,
                }
            }
            Rule::rename_stmt => {
                let mut k = self.kids(inner);
                let (from, from_span) = self.raw(k.next()?)?;
                let (to, _) = self.raw(k.next()?)?;
                StmtKind::Rename {
                    from,
                    from_span,
                    to,
                }
            }
            Rule::ignore_stmt => {
                let (pattern, pattern_span) = self.raw(self.kids(inner).next()?)?;
                StmtKind::Ignore {
                    pattern,
                    pattern_span,
                }
            }
            Rule::expr_stmt => StmtKind::Expr(self.expr(self.kids(inner).next()?)?),
            _ => return Err(internal(span)),
        })
    }
}

impl Builder {
    // ---------------------------------------------------------------- patterns

    fn pattern(&mut self, p: P<'_>) -> R<Pattern> {
        let span = self.span(&p);
        let comma = has_child(&p, Rule::comma);
        let mut k = self.kids(p);
        if k.peek() == Some(Rule::ident) {
            let id = self.ident(k.next()?);
            return Ok(if id.name == "_" {
                Pattern::Wildcard(id.span)
            } else {
                Pattern::Ident(id)
            });
        }
        self.enter(1, span)?;
        let mut pats = k.rest().map(|q| self.pattern(q)).collect::<R<Vec<_>>>()?;
        self.leave(1);
        if pats.len() == 1 && !comma {
            // `(a)` is just `a`.
            return pats.pop().ok_or_else(|| internal(span));
        }
        Ok(Pattern::Tuple(pats, span))
    }

    // ---------------------------------------------------------------- expressions

    /// `chain (|> chain | @tag)*`, folded left to right.
    fn expr(&mut self, p: P<'_>) -> R<Expr> {
        let span = self.span(&p);
        let mut k = self.kids(p);
        let ops = k
            .items
            .as_slice()
            .iter()
            .filter(|c| c.as_rule() != Rule::chain)
            .count();
        self.enter(1 + ops, span)?;
        let mut acc = self.chain(k.next()?)?;
        while let Some(c) = k.items.next() {
            match c.as_rule() {
                Rule::pipe_op => {
                    let rhs = self.chain(k.next()?)?;
                    acc = Expr {
                        span: acc.span.to(rhs.span),
                        kind: ExprKind::Pipe {
                            lhs: Box::new(acc),
                            rhs: Box::new(rhs),
                        },
                    };
                }
                Rule::tag => {
                    let tspan = self.span(&c);
                    let t = self.kids(c).next()?;
                    let tag = match t.as_rule() {
                        Rule::tag_none => None,
                        _ => Some(self.template(t)?),
                    };
                    acc = Expr {
                        span: acc.span.to(tspan),
                        kind: ExprKind::Tagged {
                            expr: Box::new(acc),
                            tag,
                        },
                    };
                }
                _ => return Err(internal(self.span(&c))),
            }
        }
        self.leave(1 + ops);
        Ok(acc)
    }

    /// `unary (binop unary)*`, folded by precedence with an explicit operator stack.
    fn chain(&mut self, p: P<'_>) -> R<Expr> {
        let span = self.span(&p);
        let items: Vec<_> = self.kids(p).rest().collect();
        let nops = items.len() / 2;
        self.enter(nops, span)?;
        let mut operands: Vec<Expr> = Vec::with_capacity(nops + 1);
        let mut ops: Vec<(BinOp, Span)> = Vec::with_capacity(nops);
        for (i, c) in items.into_iter().enumerate() {
            if i % 2 == 0 {
                operands.push(self.unary(c)?);
                continue;
            }
            let ospan = self.span(&c);
            let op = binop(c.as_rule()).ok_or_else(|| internal(ospan))?;
            while let Some(&(top, tspan)) = ops.last() {
                if prec(top) < prec(op) {
                    break;
                }
                if prec(top) == prec(op) && non_assoc(op) {
                    return Err(chained(op, ospan, top, tspan));
                }
                ops.pop();
                reduce(&mut operands, top, ospan)?;
            }
            ops.push((op, ospan));
        }
        while let Some((op, ospan)) = ops.pop() {
            reduce(&mut operands, op, ospan)?;
        }
        self.leave(nops);
        operands.pop().ok_or_else(|| internal(span))
    }

    /// `prefix* postfix (** prefix* postfix)*`: `**` is right-associative and binds tighter
    /// than the prefix operators to its left (`-2 ** 2` is `-(2 ** 2)`).
    fn unary(&mut self, p: P<'_>) -> R<Expr> {
        let span = self.span(&p);
        let items: Vec<_> = self.kids(p).rest().collect();
        let nops = items
            .iter()
            .filter(|c| c.as_rule() != Rule::postfix)
            .count();
        self.enter(nops, span)?;
        // Segments: the prefix operators before each `**` operand, and the operand.
        let mut segs: Vec<(Vec<(UnOp, usize)>, Expr)> = Vec::new();
        let mut prefixes = Vec::new();
        for c in items {
            match c.as_rule() {
                Rule::op_neg => prefixes.push((UnOp::Neg, c.as_span().start())),
                Rule::op_not => prefixes.push((UnOp::Not, c.as_span().start())),
                Rule::op_pow => {}
                Rule::postfix => segs.push((std::mem::take(&mut prefixes), self.postfix(c)?)),
                _ => return Err(internal(self.span(&c))),
            }
        }
        let mut acc: Option<Expr> = None;
        while let Some((prefixes, operand)) = segs.pop() {
            let mut e = match acc.take() {
                None => operand,
                Some(rhs) => Expr {
                    span: operand.span.to(rhs.span),
                    kind: ExprKind::Binary {
                        op: BinOp::Pow,
                        lhs: Box::new(operand),
                        rhs: Box::new(rhs),
                    },
                },
            };
            for (op, start) in prefixes.into_iter().rev() {
                e = Expr {
                    span: Span::new(self.file, start, e.span.end as usize),
                    kind: ExprKind::Unary {
                        op,
                        expr: Box::new(e),
                    },
                };
            }
            acc = Some(e);
        }
        self.leave(nops);
        acc.ok_or_else(|| internal(span))
    }

    /// `primary (call | index | field)*`.
    fn postfix(&mut self, p: P<'_>) -> R<Expr> {
        let span = self.span(&p);
        let mut k = self.kids(p);
        let nops = k.items.len().saturating_sub(1);
        self.enter(nops, span)?;
        let mut acc = self.primary(k.next()?)?;
        for c in k.rest() {
            let cspan = self.span(&c);
            let whole = acc.span.to(cspan);
            let kind = match c.as_rule() {
                Rule::call_args => ExprKind::Call {
                    callee: Box::new(acc),
                    args: self.call_args(c)?,
                },
                Rule::index => ExprKind::Index {
                    base: Box::new(acc),
                    index: Box::new(self.expr(self.kids(c).next()?)?),
                },
                Rule::field => ExprKind::Field {
                    base: Box::new(acc),
                    name: self.ident(self.kids(c).next()?),
                },
                _ => return Err(internal(cspan)),
            };
            acc = Expr { kind, span: whole };
        }
        self.leave(nops);
        Ok(acc)
    }

    fn call_args(&mut self, p: P<'_>) -> R<Vec<Arg>> {
        let mut out = Vec::new();
        for a in self.kids(p).rest() {
            let span = self.span(&a);
            let inner = self.kids(a).next()?;
            let kind = match inner.as_rule() {
                Rule::arg_spread => ArgKind::Spread(self.expr(self.kids(inner).next()?)?),
                Rule::arg_kw => {
                    let mut k = self.kids(inner);
                    let name = self.ident(k.next()?);
                    ArgKind::Keyword(name, self.expr(k.next()?)?)
                }
                _ => ArgKind::Positional(self.expr(inner)?),
            };
            out.push(Arg { kind, span });
        }
        Ok(out)
    }

    fn primary(&mut self, p: P<'_>) -> R<Expr> {
        let span = self.span(&p);
        let kind = match p.as_rule() {
            Rule::int => {
                let digits: String = p.as_str().chars().filter(|&c| c != '_').collect();
                match digits.parse::<i64>() {
                    Ok(v) => ExprKind::Int(v),
                    Err(_) => {
                        return fail(
                            Diagnostic::new(Phase::Syntax, "E0103", "integer literal is too large")
                                .at(span, format!("does not fit in 64 bits (max {})", i64::MAX)),
                        )
                    }
                }
            }
            Rule::float => {
                let digits: String = p.as_str().chars().filter(|&c| c != '_').collect();
                match digits.parse::<f64>() {
                    Ok(v) if v.is_finite() => ExprKind::Float(v),
                    _ => {
                        return fail(
                            Diagnostic::new(
                                Phase::Syntax,
                                "E0103",
                                "float literal is out of range",
                            )
                            .at(span, "does not fit in a 64-bit float"),
                        )
                    }
                }
            }
            Rule::lit_true => ExprKind::Bool(true),
            Rule::lit_false => ExprKind::Bool(false),
            Rule::lit_none => ExprKind::None,
            Rule::string => ExprKind::Str(self.template(p)?),
            Rule::ident => ExprKind::Ident(p.as_str().to_string()),
            Rule::paren => {
                let comma = has_child(&p, Rule::comma);
                self.enter(1, span)?;
                let mut items = self
                    .kids(p)
                    .rest()
                    .map(|e| self.expr(e))
                    .collect::<R<Vec<_>>>()?;
                self.leave(1);
                if items.len() == 1 && !comma {
                    // `(a)` is `a`; keep the inner span so diagnostics point at the value.
                    return items.pop().ok_or_else(|| internal(span));
                }
                ExprKind::Tuple(items)
            }
            Rule::list => {
                self.enter(1, span)?;
                let mut k = self.kids(p);
                let kind = if k.items.as_slice().get(1).map(|c| c.as_rule()) == Some(Rule::comp_for)
                {
                    let elem = self.expr(k.next()?)?;
                    let mut clauses = Vec::new();
                    for c in k.rest() {
                        let is_for = c.as_rule() == Rule::comp_for;
                        let mut ck = self.kids(c);
                        if is_for {
                            let pat = self.pattern(ck.next()?)?;
                            let iter = self.expr(ck.next()?)?;
                            clauses.push(CompClause::For { pat, iter });
                        } else {
                            clauses.push(CompClause::If(self.expr(ck.next()?)?));
                        }
                    }
                    ExprKind::Comprehension {
                        elem: Box::new(elem),
                        clauses,
                    }
                } else {
                    ExprKind::List(k.rest().map(|e| self.expr(e)).collect::<R<Vec<_>>>()?)
                };
                self.leave(1);
                kind
            }
            Rule::if_expr => {
                self.enter(1, span)?;
                let mut k = self.kids(p);
                let cond = self.expr(k.next()?)?;
                let then = self.expr(k.next()?)?;
                let other = k.next()?;
                let otherwise = if other.as_rule() == Rule::if_expr {
                    self.primary(other)?
                } else {
                    self.expr(other)?
                };
                self.leave(1);
                ExprKind::If {
                    cond: Box::new(cond),
                    then: Box::new(then),
                    otherwise: Box::new(otherwise),
                }
            }
            Rule::seq_expr => {
                self.enter(1, span)?;
                let stmts = self
                    .kids(p)
                    .rest()
                    .map(|s| self.stmt(s))
                    .collect::<R<Vec<_>>>()?;
                self.leave(1);
                ExprKind::Seq(stmts)
            }
            _ => return Err(internal(span)),
        };
        Ok(Expr { kind, span })
    }

    // ---------------------------------------------------------------- strings

    /// A template string: text, escapes, `{{`/`}}` and `{expr}` interpolations.
    fn template(&mut self, p: P<'_>) -> R<StrLit> {
        let span = self.span(&p);
        let mut parts = Vec::new();
        let mut text = String::new();
        for c in p.into_inner() {
            match c.as_rule() {
                Rule::str_text => text.push_str(c.as_str()),
                Rule::str_lbrace => text.push('{'),
                Rule::str_rbrace => text.push('}'),
                Rule::str_escape => match c.as_str() {
                    "\\\"" => text.push('"'),
                    "\\\\" => text.push('\\'),
                    "\\n" => text.push('\n'),
                    "\\t" => text.push('\t'),
                    other => {
                        return fail(
                            Diagnostic::new(
                                Phase::Syntax,
                                "E0105",
                                format!("invalid escape `{other}` in string"),
                            )
                            .at(self.span(&c), "unknown escape")
                            .with_help(r#"valid escapes are `\"`, `\\`, `\n` and `\t`"#),
                        )
                    }
                },
                Rule::str_stray => {
                    return fail(
                        Diagnostic::new(Phase::Syntax, "E0101", "unmatched `}` in string")
                            .at(self.span(&c), "no `{` opens this")
                            .with_help("write `}}` for a literal `}`"),
                    )
                }
                Rule::interp => {
                    if !text.is_empty() {
                        parts.push(StrPart::Text(std::mem::take(&mut text)));
                    }
                    let e = self.kids(c).next()?;
                    parts.push(StrPart::Interp(self.expr(e)?));
                }
                _ => return Err(internal(self.span(&c))),
            }
        }
        if !text.is_empty() {
            parts.push(StrPart::Text(text));
        }
        Ok(StrLit { parts, span })
    }

    /// A raw string (import path, regex): verbatim except that `\"` stands for `"`.
    fn raw(&self, p: P<'_>) -> R<(String, Span)> {
        let span = self.span(&p);
        let content = p.into_inner().next().map_or("", |c| c.as_str());
        let mut out = String::with_capacity(content.len());
        let mut chars = content.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('"') => out.push('"'),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        }
        Ok((out, span))
    }
}

fn binop(r: Rule) -> Option<BinOp> {
    Some(match r {
        Rule::op_or => BinOp::Or,
        Rule::op_and => BinOp::And,
        Rule::op_eq => BinOp::Eq,
        Rule::op_ne => BinOp::Ne,
        Rule::op_lt => BinOp::Lt,
        Rule::op_le => BinOp::Le,
        Rule::op_gt => BinOp::Gt,
        Rule::op_ge => BinOp::Ge,
        Rule::op_range => BinOp::Range,
        Rule::op_concat => BinOp::Concat,
        Rule::op_add => BinOp::Add,
        Rule::op_sub => BinOp::Sub,
        Rule::op_mul => BinOp::Mul,
        Rule::op_div => BinOp::Div,
        Rule::op_floordiv => BinOp::FloorDiv,
        Rule::op_mod => BinOp::Mod,
        _ => return None,
    })
}

/// Binding strength of the operators folded by [`Builder::chain`] (`**` is handled apart).
fn prec(op: BinOp) -> u8 {
    match op {
        BinOp::Or => 1,
        BinOp::And => 2,
        BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 3,
        BinOp::Range => 4,
        BinOp::Add | BinOp::Sub | BinOp::Concat => 5,
        BinOp::Mul | BinOp::Div | BinOp::FloorDiv | BinOp::Mod => 6,
        BinOp::Pow => 7,
    }
}

/// Comparisons and ranges do not chain: `a < b < c` means different things in different
/// languages, so it is rejected rather than guessed.
fn non_assoc(op: BinOp) -> bool {
    matches!(prec(op), 3 | 4)
}

fn chained(op: BinOp, ospan: Span, prev: BinOp, pspan: Span) -> Box<Diagnostic> {
    let (what, help) = if op == BinOp::Range {
        (
            "range operators cannot be chained",
            "use parentheses to say which range is meant",
        )
    } else {
        (
            "comparison operators cannot be chained",
            "split it: `a < b && b < c`",
        )
    };
    Box::new(
        Diagnostic::new(Phase::Syntax, "E0101", what)
            .at(
                ospan,
                format!("`{}` after `{}`", op.symbol(), prev.symbol()),
            )
            .with_secondary(pspan, "first operator here")
            .with_help(help),
    )
}

fn reduce(operands: &mut Vec<Expr>, op: BinOp, at: Span) -> R<()> {
    let (Some(rhs), Some(lhs)) = (operands.pop(), operands.pop()) else {
        return Err(internal(at));
    };
    operands.push(Expr {
        span: lhs.span.to(rhs.span),
        kind: ExprKind::Binary {
            op,
            lhs: Box::new(lhs),
            rhs: Box::new(rhs),
        },
    });
    Ok(())
}
