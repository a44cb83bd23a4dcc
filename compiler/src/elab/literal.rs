//! Literals given on the command line (`--arg NAME=VALUE`): the spec language's literal
//! syntax without its expressions. An int (`3`, `-2`, `1_000`), a float (`1.5`, `2e-3`),
//! `true`, `false`, `none`, a string with the language's escapes (`"avg"`, `"a\"b"`), or a
//! bracketed list of those (`[1, [2, 3], "x,y",]`), nested at most as deep as the elaborator
//! lets a value be ([`MAX_NESTING`]): the same value written in a spec would be refused past
//! it, and the parser recurses once per level.

use super::eval::MAX_NESTING;
use super::value::Value;

/// The value `text` spells, or why it spells none (with the byte offset where reading
/// stopped, for a caret).
pub fn parse_literal(text: &str) -> Result<Value, LiteralError> {
    let mut r = Reader { text, at: 0 };
    let value = r.value(0)?;
    r.skip_space();
    if r.at < text.len() {
        return Err(r.error("unexpected text after the value"));
    }
    Ok(value)
}

/// Why a command-line literal could not be read.
#[derive(Clone, Debug, PartialEq)]
pub struct LiteralError {
    pub message: String,
    /// Byte offset into the text.
    pub at: usize,
    /// Whether the text is not literal syntax at all (rather than a literal out of range or
    /// nested too deep).
    pub syntax: bool,
}

struct Reader<'t> {
    text: &'t str,
    at: usize,
}

impl Reader<'_> {
    fn error(&self, message: impl Into<String>) -> LiteralError {
        LiteralError {
            message: message.into(),
            at: self.at,
            syntax: true,
        }
    }

    fn limit(&self, message: impl Into<String>) -> LiteralError {
        LiteralError {
            syntax: false,
            ..self.error(message)
        }
    }

    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.at = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        let found = self.rest().starts_with(c);
        if found {
            self.at += c.len_utf8();
        }
        found
    }

    fn value(&mut self, depth: usize) -> Result<Value, LiteralError> {
        self.skip_space();
        match self.rest().chars().next() {
            None => Err(self.error("expected a value")),
            Some('[') => self.list(depth + 1),
            Some('"') => self.string(),
            Some(_) => self.atom(),
        }
    }

    fn list(&mut self, depth: usize) -> Result<Value, LiteralError> {
        if depth > MAX_NESTING {
            return Err(self.limit(format!("value nested more than {MAX_NESTING} levels deep")));
        }
        self.at += 1; // `[`
        let mut items = Vec::new();
        loop {
            if self.eat(']') {
                return Ok(Value::list(items));
            }
            items.push(self.value(depth)?);
            if !self.eat(',') {
                if self.eat(']') {
                    return Ok(Value::list(items));
                }
                return Err(self.error("expected `,` or `]` in the list"));
            }
        }
    }

    /// A string with the language's escapes: `\"`, `\\`, `\n` and `\t`.
    fn string(&mut self) -> Result<Value, LiteralError> {
        let start = self.at;
        self.at += 1; // the opening quote
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.at += i + 1;
                    return Ok(Value::str(out));
                }
                '\\' => {
                    let escaped = match chars.next() {
                        Some((_, '"')) => '"',
                        Some((_, '\\')) => '\\',
                        Some((_, 'n')) => '\n',
                        Some((_, 't')) => '\t',
                        _ => {
                            self.at += i;
                            return Err(self.error(
                                r#"invalid escape in the string (valid are `\"`, `\\`, `\n` and `\t`)"#,
                            ));
                        }
                    };
                    out.push(escaped);
                }
                c => out.push(c),
            }
        }
        self.at = start;
        Err(self.error("the string is never closed"))
    }

    /// `true`, `false`, `none` or a number, up to the next `,`, `]` or space.
    fn atom(&mut self) -> Result<Value, LiteralError> {
        let word_len = self
            .rest()
            .find(|c: char| c == ',' || c == ']' || c == '[' || c.is_whitespace())
            .unwrap_or(self.rest().len());
        let word = &self.rest()[..word_len];
        let value = match word {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "none" => Value::None,
            _ => number(word).map_err(|(why, syntax)| LiteralError {
                syntax,
                ..self.error(why)
            })?,
        };
        self.at += word_len;
        Ok(value)
    }
}

/// An int or float literal as the spec language writes one (`_` between digits allowed),
/// with an optional sign; or why not, and whether that is its syntax (not its range).
fn number(word: &str) -> Result<Value, (String, bool)> {
    let unsigned = word.strip_prefix(['-', '+']).unwrap_or(word);
    let well_formed = unsigned.starts_with(|c: char| c.is_ascii_digit())
        && unsigned
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '_' | '.' | 'e' | 'E' | '+' | '-'));
    if !well_formed {
        return Err((format!("`{word}` is not a literal"), true));
    }
    let digits: String = word.chars().filter(|&c| c != '_').collect();
    let is_int = unsigned.chars().all(|c| c.is_ascii_digit() || c == '_');
    if is_int {
        return digits.parse::<i64>().map(Value::Int).map_err(|_| {
            let why = format!(
                "the integer `{word}` is out of range (a 64-bit signed integer, at most {})",
                i64::MAX
            );
            (why, false)
        });
    }
    match digits.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Value::Float(f)),
        Ok(_) => Err((format!("the float `{word}` is out of range"), false)),
        Err(_) => Err((format!("`{word}` is not a number"), true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> String {
        match parse_literal(text) {
            Ok(v) => format!("{v:?}"),
            Err(e) => format!("error at {}: {}", e.at, e.message),
        }
    }

    #[test]
    fn literals_read_as_in_a_spec() {
        let cases = [
            ("3", Value::Int(3)),
            (" -2 ", Value::Int(-2)),
            ("1_000", Value::Int(1000)),
            ("1.5", Value::Float(1.5)),
            ("2e-3", Value::Float(2e-3)),
            ("true", Value::Bool(true)),
            ("none", Value::None),
            (r#""avg""#, Value::str("avg")),
            (r#""a\"b\n""#, Value::str("a\"b\n")),
            (r#"["a,b"]"#, Value::list(vec![Value::str("a,b")])),
            (
                r#"["[", 1]"#,
                Value::list(vec![Value::str("["), Value::Int(1)]),
            ),
            ("[1,]", Value::list(vec![Value::Int(1)])),
            ("[ ]", Value::list(Vec::new())),
            (
                "[1, [2, 3]]",
                Value::list(vec![
                    Value::Int(1),
                    Value::list(vec![Value::Int(2), Value::Int(3)]),
                ]),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(read(text), format!("{want:?}"), "{text}");
        }
    }

    #[test]
    fn malformed_literals_say_why_and_where() {
        let cases = [
            ("", "error at 0: expected a value"),
            (r#""a"b""#, "error at 3: unexpected text after the value"),
            ("[1 2]", "error at 3: expected `,` or `]` in the list"),
            ("[1", "error at 2: expected `,` or `]` in the list"),
            (r#""abc"#, "error at 0: the string is never closed"),
            (r#""a\q""#, "error at 2: invalid escape"),
            (
                "99999999999999999999",
                "error at 0: the integer `99999999999999999999` is out",
            ),
            ("1e999", "error at 0: the float `1e999` is out of range"),
            ("avg", "error at 0: `avg` is not a literal"),
            ("1.2.3", "error at 0: `1.2.3` is not a number"),
        ];
        for (text, want) in cases {
            let got = read(text);
            assert!(got.starts_with(want), "{text}: {got}");
        }
    }

    /// Nesting is bounded as for values in a spec, without recursing past the bound: 60,000
    /// levels had overflowed the stack.
    #[test]
    fn deep_nesting_is_refused_without_recursing() {
        let ok = format!("{}{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        assert!(parse_literal(&ok).is_ok());
        let deep = format!("{}{}", "[".repeat(60_000), "]".repeat(60_000));
        let e = parse_literal(&deep).expect_err("too deep");
        assert!(e.message.contains("nested more than"), "{}", e.message);
        assert_eq!(e.at, MAX_NESTING);
    }
}
