//! Parser tests: precedence (via compact S-expressions of the AST), every example program of
//! the design notes, statement shapes, syntax-error diagnostics, and a no-panic mutation sweep.

use bbc_grammar::ast::*;
use bbc_grammar::{parse, Diagnostic, Phase, SourceMap};

fn parse_str(src: &str) -> Result<File, (Vec<Diagnostic>, SourceMap)> {
    let mut sm = SourceMap::new();
    let f = sm.add("t.bb", src);
    parse(&sm, f).map_err(|d| (d, sm))
}

fn ok(src: &str) -> File {
    match parse_str(src) {
        Ok(f) => f,
        Err((d, sm)) => panic!("{src}\n{}", d[0].render(&sm)),
    }
}

/// The first diagnostic and its rendering.
fn err(src: &str) -> (Diagnostic, String) {
    match parse_str(src) {
        Ok(f) => panic!("expected an error for {src:?}, got {f:?}"),
        Err((d, sm)) => {
            assert_eq!(d.len(), 1);
            let text = d[0].render(&sm);
            assert_eq!(d[0].phase, Phase::Syntax);
            (d[0].clone(), text)
        }
    }
}

// ------------------------------------------------------------------ S-expressions

fn sx(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(v) => v.to_string(),
        ExprKind::Float(v) => format!("{v:?}"),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::None => "none".into(),
        ExprKind::Str(s) => sx_str(s),
        ExprKind::Ident(n) => n.clone(),
        ExprKind::List(xs) => format!("[{}]", sx_all(xs)),
        ExprKind::Tuple(xs) => format!(
            "(tuple{}{})",
            if xs.is_empty() { "" } else { " " },
            sx_all(xs)
        ),
        ExprKind::Comprehension { elem, clauses } => {
            let cs: Vec<String> = clauses
                .iter()
                .map(|c| match c {
                    CompClause::For { pat, iter } => format!("(for {} {})", sp(pat), sx(iter)),
                    CompClause::If(c) => format!("(if {})", sx(c)),
                })
                .collect();
            format!("(comp {} {})", sx(elem), cs.join(" "))
        }
        ExprKind::Unary { op, expr } => {
            format!(
                "({} {})",
                if *op == UnOp::Neg { "-" } else { "!" },
                sx(expr)
            )
        }
        ExprKind::Binary { op, lhs, rhs } => format!("({} {} {})", op.symbol(), sx(lhs), sx(rhs)),
        ExprKind::Call { callee, args } => {
            let mut s = format!("(call {}", sx(callee));
            for a in args {
                s.push(' ');
                s.push_str(&match &a.kind {
                    ArgKind::Positional(e) => sx(e),
                    ArgKind::Keyword(k, e) => format!("{}={}", k.name, sx(e)),
                    ArgKind::Spread(e) => format!("..{}", sx(e)),
                });
            }
            s + ")"
        }
        ExprKind::Index { base, index } => format!("(idx {} {})", sx(base), sx(index)),
        ExprKind::Field { base, name } => format!("(. {} {})", sx(base), name.name),
        ExprKind::Pipe { lhs, rhs } => format!("(|> {} {})", sx(lhs), sx(rhs)),
        ExprKind::If {
            cond,
            then,
            otherwise,
        } => format!("(if {} {} {})", sx(cond), sx(then), sx(otherwise)),
        ExprKind::Seq(stmts) => format!("(seq {})", stmts.len()),
        ExprKind::Tagged { expr, tag } => match tag {
            Some(t) => format!("(@ {} {})", sx(expr), sx_str(t)),
            None => format!("(@ {} _)", sx(expr)),
        },
    }
}

fn sx_all(xs: &[Expr]) -> String {
    xs.iter().map(sx).collect::<Vec<_>>().join(" ")
}

fn sx_str(s: &StrLit) -> String {
    let mut out = String::from("\"");
    for p in &s.parts {
        match p {
            StrPart::Text(t) => out.push_str(&t.replace('{', "{{").replace('}', "}}")),
            StrPart::Interp(e) => out.push_str(&format!("{{{}}}", sx(e))),
        }
    }
    out + "\""
}

fn sp(p: &Pattern) -> String {
    match p {
        Pattern::Ident(i) => i.name.clone(),
        Pattern::Wildcard(_) => "_".into(),
        Pattern::Tuple(ps, _) => format!("({})", ps.iter().map(sp).collect::<Vec<_>>().join(" ")),
    }
}

/// The S-expression of `src` as the value of a top-level `let`.
fn e(src: &str) -> String {
    let file = ok(&format!("let v = {src};"));
    match &file.items[0] {
        Item::Let { value, .. } => sx(value),
        other => panic!("{other:?}"),
    }
}

// ------------------------------------------------------------------ precedence

#[test]
fn precedence_table() {
    let cases = [
        ("1 + 2 * 3", "(+ 1 (* 2 3))"),
        ("1 * 2 + 3", "(+ (* 1 2) 3)"),
        ("a - b - c", "(- (- a b) c)"),
        ("a // b % c * d / e", "(/ (* (% (// a b) c) d) e)"),
        ("-2 ** 2", "(- (** 2 2))"),
        ("2 ** -1", "(** 2 (- 1))"),
        ("2 ** 3 ** 2", "(** 2 (** 3 2))"),
        ("-a ** -b ** c", "(- (** a (- (** b c))))"),
        ("2 ** -1 * 3", "(* (** 2 (- 1)) 3)"),
        ("-a * b", "(* (- a) b)"),
        ("2 * -3", "(* 2 (- 3))"),
        ("!a && b", "(&& (! a) b)"),
        ("!!a", "(! (! a))"),
        ("a || b && c == d", "(|| a (&& b (== c d)))"),
        ("a && b || c", "(|| (&& a b) c)"),
        ("a + 1 < b * 2", "(< (+ a 1) (* b 2))"),
        ("a != b", "(!= a b)"),
        ("a <= b", "(<= a b)"),
        ("a >= b", "(>= a b)"),
        ("0..n - 1", "(.. 0 (- n 1))"),
        ("0..4", "(.. 0 4)"),
        ("a..b == c", "(== (.. a b) c)"),
        ("xs ++ [1] ++ ys", "(++ (++ xs [1]) ys)"),
        ("a + b ++ c", "(++ (+ a b) c)"),
        ("a.b(c)[0]", "(idx (call (. a b) c) 0)"),
        ("-x.y", "(- (. x y))"),
        ("-f(x)[1] ** 2", "(- (** (idx (call f x) 1) 2))"),
        ("f(..xs, k=1, 2, )", "(call f ..xs k=1 2)"),
        ("f(a == b)", "(call f (== a b))"),
        ("a |> f(k=1)", "(|> a (call f k=1))"),
        ("a |> f() |> g", "(|> (|> a (call f)) g)"),
        ("a + b |> f()", "(|> (+ a b) (call f))"),
        ("a || b |> f()", "(|> (|| a b) (call f))"),
        ("a |> f() @\"t\"", "(@ (|> a (call f)) \"t\")"),
        ("a |> f() @_", "(@ (|> a (call f)) _)"),
        (
            "f(x) @\"a.{j}\" |> g()",
            "(|> (@ (call f x) \"a.{j}\") (call g))",
        ),
        ("f(g(x) @\"mlp\", 1)", "(call f (@ (call g x) \"mlp\") 1)"),
        ("(a)", "a"),
        ("(a,)", "(tuple a)"),
        ("()", "(tuple)"),
        ("(a, b,)", "(tuple a b)"),
        ("(1 + 2) * 3", "(* (+ 1 2) 3)"),
        ("[]", "[]"),
        ("[1, 2,]", "[1 2]"),
        (
            "[x * 2 for (i, x) in enumerate(xs) if i > 0]",
            "(comp (* x 2) (for (i x) (call enumerate xs)) (if (> i 0)))",
        ),
        (
            "[a for a in xs for b in ys]",
            "(comp a (for a xs) (for b ys))",
        ),
        (
            "if a { 1 } else if b { 2 } else { 3 }",
            "(if a 1 (if b 2 3))",
        ),
        ("if c { a } else { b } @\"{j}\"", "(@ (if c a b) \"{j}\")"),
        ("seq { relu(); conv2d(out=3); }", "(seq 2)"),
        ("x |> seq { relu(); } @_", "(@ (|> x (seq 1)) _)"),
        ("true && !false", "(&& true (! false))"),
        ("none", "none"),
        ("1_000", "1000"),
        ("1e-6", "1e-6"),
        ("1.5e3", "1500.0"),
        ("2.0", "2.0"),
        ("\"a{i + 1}b{{c}}\"", "\"a{(+ i 1)}b{{c}}\""),
        ("\"q\\\"\\\\\\n\\t\"", "\"q\"\\\n\t\""),
        ("\"{f(\"x\")}\"", "\"{(call f \"x\")}\""),
        ("_", "_"),
        ("nn.conv(x)", "(call (. nn conv) x)"),
        ("a  #comment\n + b", "(+ a b)"),
    ];
    let mut bad = Vec::new();
    for (src, want) in cases {
        let got = e(src);
        if got != want {
            bad.push(format!("{src:<40} got {got}, want {want}"));
        }
    }
    assert!(bad.is_empty(), "\n{}", bad.join("\n"));
}

#[test]
fn spans_are_byte_offsets() {
    let src = "let v = a + f(b);";
    let file = ok(src);
    let Item::Let { value, span, .. } = &file.items[0] else {
        panic!()
    };
    assert_eq!(&src[span.range()], src);
    assert_eq!(&src[value.span.range()], "a + f(b)");
    let ExprKind::Binary { rhs, .. } = &value.kind else {
        panic!()
    };
    assert_eq!(&src[rhs.span.range()], "f(b)");
    // Interpolations carry their own spans.
    let src = "let s = \"x{i + 1}\";";
    let file = ok(src);
    let Item::Let { value, .. } = &file.items[0] else {
        panic!()
    };
    let ExprKind::Str(s) = &value.kind else {
        panic!()
    };
    let StrPart::Interp(e) = &s.parts[1] else {
        panic!()
    };
    assert_eq!(&src[e.span.range()], "i + 1");
}

// ------------------------------------------------------------------ items and statements

#[test]
fn items_and_statements() {
    let src = r#"bb 0.1;
import "std/nn.bb";
import "lib.bb" as nn;
let (A, _) = (1, 2);
fn f(a: int, b: float = 1.0,) -> int = a * 2;
fn g(a) = a;
block b(x: tensor[B, C, _, 2 * C], ks: [int], t: (int, str), l: layer) -> tensor {
    return x;
}
model m(k: int = 3) {
    input x: f32[B=1, 3, H=224, W, 2 * k];
    let n = 2;
    (a, (b, _)) = split(x);
    h = x;
    for (i, w) in enumerate([1, 2]) as "blocks.{i}" { h = conv(h, out=w); }
    for j in 0..n { h = relu(h); }
    if k > 1 { h = a; } else if k > 0 { h = b; } else { h = x; }
    if k == 3 { }
    scope "head.{k}" { fc = linear(h, out=10); }
    assert k > 0, "k must be positive";
    assert k < 10;
    param gamma: f32[C] = fill(1e-6);
    buffer m: f32[3, 3];
    const c: f32 = 1.0;
    rename "^a\.(\d+)\"" => "b.$1";
    ignore "x\\";
    relu(h);
    output y = h;
}
model m2 = m(k=5);
model m3(phi: int) = m(k=phi * 2);
"#;
    let f = ok(src);
    assert_eq!(f.version.as_ref().map(|v| v.0.as_str()), Some("0.1"));
    assert_eq!(f.items.len(), 9);
    match &f.items[0] {
        Item::Import {
            path,
            alias: None,
            path_span,
            ..
        } => {
            assert_eq!(path, "std/nn.bb");
            assert_eq!(&src[path_span.range()], "\"std/nn.bb\"");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&f.items[1], Item::Import { alias: Some(a), .. } if a.name == "nn"));
    match &f.items[2] {
        Item::Let {
            pat: Pattern::Tuple(ps, _),
            ..
        } => {
            assert!(matches!(ps[..], [Pattern::Ident(_), Pattern::Wildcard(_)]))
        }
        other => panic!("{other:?}"),
    }
    let Item::Fn(fd) = &f.items[3] else { panic!() };
    assert_eq!(fd.params.len(), 2);
    assert_eq!(fd.ret.as_ref().map(|t| &t.kind), Some(&TypeKind::Int));
    assert!(fd.params[1].default.is_some());
    let Item::Fn(g) = &f.items[4] else { panic!() };
    assert!(g.ret.is_none() && g.params[0].ty.is_none());
    let Item::Block(b) = &f.items[5] else {
        panic!()
    };
    let TypeKind::Tensor(Some(dims)) = &b.params[0].ty.as_ref().unwrap().kind else {
        panic!()
    };
    assert_eq!(
        dims.iter().map(sx).collect::<Vec<_>>(),
        ["B", "C", "_", "(* 2 C)"]
    );
    assert!(
        matches!(&b.params[1].ty.as_ref().unwrap().kind, TypeKind::List(t) if t.kind == TypeKind::Int)
    );
    assert!(matches!(&b.params[2].ty.as_ref().unwrap().kind, TypeKind::Tuple(ts) if ts.len() == 2));
    assert_eq!(b.params[3].ty.as_ref().unwrap().kind, TypeKind::Layer);
    assert_eq!(b.ret.as_ref().unwrap().kind, TypeKind::Tensor(None));

    let Item::Model(m) = &f.items[6] else {
        panic!()
    };
    let kinds: Vec<&StmtKind> = m.body.iter().map(|s| &s.kind).collect();
    let StmtKind::Input { name, dtype, dims } = kinds[0] else {
        panic!()
    };
    assert_eq!((name.name.as_str(), dtype.name.as_str()), ("x", "f32"));
    let shape: Vec<(Option<&str>, Option<String>)> = dims
        .iter()
        .map(|d| {
            (
                d.name.as_ref().map(|n| n.name.as_str()),
                d.value.as_ref().map(sx),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (Some("B"), Some("1".into())),
            (None, Some("3".into())),
            (Some("H"), Some("224".into())),
            (Some("W"), None),
            (None, Some("(* 2 k)".into())),
        ]
    );
    assert!(matches!(kinds[1], StmtKind::Let { .. }));
    assert!(matches!(
        kinds[2],
        StmtKind::Assign {
            pat: Pattern::Tuple(..),
            ..
        }
    ));
    assert!(matches!(
        kinds[3],
        StmtKind::Assign {
            pat: Pattern::Ident(_),
            ..
        }
    ));
    match kinds[4] {
        StmtKind::For {
            pat,
            path: Some(p),
            body,
            ..
        } => {
            assert_eq!(sp(pat), "(i w)");
            assert_eq!(sx_str(p), "\"blocks.{i}\"");
            assert_eq!(body.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(kinds[5], StmtKind::For { path: None, .. }));
    match kinds[6] {
        StmtKind::If {
            otherwise: Some(o), ..
        } => {
            assert!(matches!(
                &o[..],
                [Stmt {
                    kind: StmtKind::If {
                        otherwise: Some(_),
                        ..
                    },
                    ..
                }]
            ))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(kinds[7], StmtKind::If { otherwise: None, then, .. } if then.is_empty()));
    assert!(matches!(kinds[8], StmtKind::Scope { .. }));
    assert!(matches!(
        kinds[9],
        StmtKind::Assert {
            message: Some(_),
            ..
        }
    ));
    assert!(matches!(kinds[10], StmtKind::Assert { message: None, .. }));
    match kinds[11] {
        StmtKind::Decl {
            kind,
            name,
            dtype,
            dims,
            init,
        } => {
            assert_eq!(
                (*kind, name.name.as_str(), dtype.name.as_str()),
                (DeclKind::Param, "gamma", "f32")
            );
            assert_eq!(dims.len(), 1);
            assert!(init.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(kinds[12], StmtKind::Decl { kind: DeclKind::Buffer, dims, init: None, .. } if dims.len() == 2)
    );
    assert!(
        matches!(kinds[13], StmtKind::Decl { kind: DeclKind::Const, dims, init: Some(_), .. } if dims.is_empty())
    );
    match kinds[14] {
        StmtKind::Rename {
            from,
            to,
            from_span,
        } => {
            assert_eq!(from, r#"^a\.(\d+)""#);
            assert_eq!(to, "b.$1");
            assert_eq!(&src[from_span.range()], r#""^a\.(\d+)\"""#);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(kinds[15], StmtKind::Ignore { pattern, .. } if pattern == r"x\\"));
    assert!(matches!(kinds[16], StmtKind::Expr(_)));
    assert!(matches!(kinds[17], StmtKind::Output { .. }));
    match &f.items[7] {
        Item::Variant(v) => {
            assert_eq!((v.name.name.as_str(), v.base.name.as_str()), ("m2", "m"));
            assert!(v.params.is_empty());
            assert_eq!(v.args.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&f.items[8], Item::Variant(v) if v.params.len() == 1));
}

#[test]
fn tagged_if_expression_binding() {
    let src =
        r#"model m() { h = if t == "ds" { ds(h) } else { ir(h) } @"{j}"; x = a |> f() @"t"; }"#;
    let f = ok(src);
    let Item::Model(m) = &f.items[0] else {
        panic!()
    };
    let vals: Vec<String> = m
        .body
        .iter()
        .map(|s| match &s.kind {
            StmtKind::Assign { value, .. } => sx(value),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        vals,
        [
            "(@ (if (== t \"ds\") (call ds h) (call ir h)) \"{j}\")",
            "(@ (|> a (call f)) \"t\")"
        ]
    );
}

#[test]
fn empty_and_comment_only_files() {
    assert!(ok("").items.is_empty());
    assert!(ok("# nothing\n  \n").items.is_empty());
    assert!(ok("bb 0.1;").version.is_some());
}

#[test]
fn example_programs_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/examples");
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.extension().and_then(|e| e.to_str()) != Some("bb") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut sm = SourceMap::new();
        let f = sm.add(path.display().to_string(), text);
        match parse(&sm, f) {
            Ok(file) => assert!(!file.items.is_empty(), "{}", path.display()),
            Err(d) => panic!("{}", d[0].render(&sm)),
        }
        n += 1;
    }
    assert!(n >= 8, "only {n} examples found");
}

// ------------------------------------------------------------------ errors

#[test]
fn missing_semicolon_points_after_previous_token() {
    let (d, text) = err("model m() {\n    x = f(1)\n    y = 2;\n}\n");
    assert_eq!(d.code, "E0101");
    assert!(d.message.starts_with("expected `;`"), "{}", d.message);
    assert!(d.message.contains("an operator"), "{}", d.message);
    assert!(d.message.ends_with("found `y`"), "{}", d.message);
    assert!(text.contains("t.bb:2:13"), "{text}");
    assert!(text.contains("help: add `;`"), "{text}");
}

#[test]
fn unexpected_token_on_same_line() {
    let (d, text) = err("let x = 1 2;");
    assert_eq!(d.code, "E0101");
    assert_eq!(d.message, "expected `;` or an operator, found `2`");
    assert!(text.contains("t.bb:1:11"), "{text}");
    assert!(text.contains('^'), "{text}");
}

#[test]
fn error_messages_name_tokens() {
    let cases = [
        ("let x = f(1;", "expected `,`, `)` or an operator, found `;`", "1:12"),
        ("let x = [1, 2;", "expected `,`, `]` or an operator, found `;`", "1:14"),
        ("let x = ;", "expected an expression, found `;`", "1:9"),
        ("fn f(a: int) -> = 1;", "expected a type, found `=`", "1:17"),
        ("for x in y {}", "expected an item (`import`, `let`, `fn`, `block` or `model`), found keyword `for`", "1:1"),
        ("let x = 1; 2", "expected an item (`import`, `let`, `fn`, `block` or `model`) or end of file, found `2`", "1:12"),
        ("model m() { for i y { } }", "expected `in`, found `y`", "1:19"),
        ("model m() { x = 1; , }", "expected `}` or a statement, found `,`", "1:20"),
        ("model m() {", "expected `}` or a statement, found end of file", "1:12"),
        ("let x = a @ b;", "expected `_` or a string, found `b`", "1:13"),
        ("model m() { rename \"a\" \"b\"; }", "expected `=>`, found a string", "1:24"),
        ("block b(x: tensor) tensor { }", "expected `{` or `->`, found `tensor`", "1:20"),
    ];
    for (src, msg, loc) in cases {
        let (d, text) = err(src);
        assert_eq!(d.code, "E0101", "{src}");
        assert_eq!(d.message, msg, "{src}");
        assert!(text.contains(&format!("t.bb:{loc}")), "{src}\n{text}");
    }
}

/// Code, message, primary location, and help of the first diagnostic of `src`.
fn check(src: &str, code: &str, message: &str, loc: &str, help: Option<&str>) -> Diagnostic {
    let (d, text) = err(src);
    assert_eq!(d.code, code, "{src}\n{text}");
    assert_eq!(d.message, message, "{src}\n{text}");
    assert!(text.contains(&format!("t.bb:{loc}\n")), "{src}\n{text}");
    assert_eq!(d.help.as_deref(), help, "{src}\n{text}");
    d
}

/// Line:col of every secondary label of `d`, with its message.
fn secondaries(src: &str, d: &Diagnostic) -> Vec<(String, String)> {
    let mut sm = SourceMap::new();
    let f = sm.add("t.bb", src);
    d.secondary
        .iter()
        .map(|l| {
            assert_eq!(l.span.file, f);
            let loc = sm.location(l.span);
            (format!("{}:{}", loc.line, loc.col), l.message.clone())
        })
        .collect()
}

#[test]
fn stray_closing_brackets_are_named() {
    let cases = [
        ("model m() {\n    y = relu(x));\n}\n", ')', '(', "2:16"),
        ("let x = [1, 2]];", ']', '[', "1:15"),
        ("let x = 1; }", '}', '{', "1:12"),
        ("model m() { x = 1; ) }", ')', '(', "1:20"),
        // Forgiving matching: `]` closes nothing, `)` and `}` still match their openers.
        ("let x = f(1]);", ']', '[', "1:12"),
        // Inside an interpolation, a bracket cannot close anything outside it.
        ("let x = f(\"{a)}\");", ')', '(', "1:14"),
    ];
    for (src, close, open, loc) in cases {
        check(
            src,
            "E0101",
            &format!("unmatched `{close}`"),
            loc,
            Some(&format!("remove it, or add the matching `{open}` earlier")),
        );
    }
    // A closer that does match is not blamed, even when another bracket is missing.
    let (d, _) = err("let x = f(1;");
    assert!(!d.message.contains("unmatched"), "{}", d.message);
}

#[test]
fn unclosed_brackets_are_labelled() {
    // File ends inside a body.
    let src = "model m() {\n    x = 1;\n";
    let d = check(
        src,
        "E0101",
        "expected `}` or a statement, found end of file",
        "3:1",
        None,
    );
    assert_eq!(
        secondaries(src, &d),
        [("1:11".to_string(), "this `{` is never closed".to_string())]
    );
    // The next item starts inside the body: the inner `if` brace is the one to blame.
    let src = "block b() {\n    if c {\n        x = 1;\n\nmodel m() {\n}\n";
    let d = check(
        src,
        "E0101",
        "expected `}` or a statement, found keyword `model`",
        "5:1",
        None,
    );
    assert_eq!(
        secondaries(src, &d),
        [("2:10".to_string(), "this `{` is never closed".to_string())]
    );
    // Parentheses too, when `)` is what was expected.
    let src = "let x = f(1,\n  2";
    let d = check(
        src,
        "E0101",
        "expected `,`, `)` or an operator, found end of file",
        "2:4",
        None,
    );
    assert_eq!(
        secondaries(src, &d),
        [("1:10".to_string(), "this `(` is never closed".to_string())]
    );
    // Balanced brackets get no label.
    let (d, _) = err("model m() { x = 1 }");
    assert!(d.secondary.is_empty(), "{:?}", d.secondary);
}

#[test]
fn assignment_in_a_condition_suggests_equality() {
    let eq = Some("did you mean `==`?");
    for (src, message, loc) in [
        (
            "model m() {\n    if pool = \"avg\" { }\n}",
            "expected `{` or an operator, found `=`",
            "2:13",
        ),
        (
            "model m() { assert k = 3; }",
            "expected `;`, `,` or an operator, found `=`",
            "1:22",
        ),
        (
            "model m() { if a == 1 && b = 2 { } }",
            "expected `{` or an operator, found `=`",
            "1:28",
        ),
        (
            "let x = if a = 1 { 2 } else { 3 };",
            "expected `{` or an operator, found `=`",
            "1:14",
        ),
    ] {
        check(src, "E0101", message, loc, eq);
    }
    // Not in a condition: no `==` hint.
    let (d, _) = err("let x = a = b;");
    assert_ne!(d.help.as_deref(), eq);
}

#[test]
fn an_operator_after_a_tag_says_the_tag_binds_loosest() {
    let help = "a tag `@\"...\"` binds looser than every operator but `|>`, so only `|>` can \
                follow it; parenthesise the tagged value: `(conv2d(x, out=4, k=1) @\"c\") + x`";
    for (src, message, loc) in [
        (
            "let y = relu(conv2d(x, out=4) @\"c\" + x);",
            "expected `,`, `)` or an operator, found `+`",
            "1:36",
        ),
        (
            "let y = f(x) @_ * 2;",
            "expected `;` or an operator, found `*`",
            "1:17",
        ),
    ] {
        check(src, "E0101", message, loc, Some(help));
    }
    // A pipe may follow a tag; an operator after a string that is no tag gets no hint.
    ok("let y = x @\"a\" |> relu;");
    let (d, _) = err("let y = \"a\" \"b\";");
    assert_ne!(d.help.as_deref(), Some(help));
}

#[test]
fn other_languages_type_names_suggest_this_ones() {
    for (word, ty) in [
        ("string", "str"),
        ("f32", "float"),
        ("Tensor", "tensor[...]"),
    ] {
        let src = format!("fn f(a: {word}) -> int {{ return 1; }}");
        let (d, text) = err(&src);
        assert_eq!(
            d.message,
            format!("expected a type, found `{word}`"),
            "{text}"
        );
        let help = d.help.expect("a hint");
        assert!(
            help.starts_with(&format!("this type is spelled `{ty}`")),
            "{help}"
        );
    }
}

#[test]
fn unsupported_version_is_reported() {
    check(
        "bb 9.9;\nlet x = 1;\n",
        "E0107",
        "unsupported language version `9.9`",
        "1:4",
        Some("this bbc understands `bb 0.1`"),
    );
    check(
        "# header\n\nbb 0.1.0;",
        "E0107",
        "unsupported language version `0.1.0`",
        "3:4",
        Some("this bbc understands `bb 0.1`"),
    );
    assert!(ok("# header\nbb 0.1;\nlet x = 1;").version.is_some());
    // With a later syntax error too, the version comes first: it may explain the error.
    let Err((ds, _)) = parse_str("bb 0.2;\nlet x = ;") else {
        panic!("expected errors");
    };
    let codes: Vec<_> = ds.iter().map(|d| d.code).collect();
    assert_eq!(codes, ["E0107", "E0101"]);
}

#[test]
fn misspelt_item_keywords_get_a_suggestion() {
    let item = "expected an item (`import`, `let`, `fn`, `block` or `model`)";
    for (src, word, kw) in [
        ("modle m() { }", "modle", "model"),
        ("blokc b(x) { }", "blokc", "block"),
        ("improt \"x.bb\";", "improt", "import"),
        ("Model m() { }", "Model", "model"),
        ("fm f(x) = x;", "fm", "fn"),
        ("lett x = 1;", "lett", "let"),
    ] {
        check(
            src,
            "E0101",
            &format!("{item}, found `{word}`"),
            "1:1",
            Some(&format!("did you mean `{kw}`?")),
        );
    }
    // After a complete item, the suggestion still applies (the item list continues).
    check(
        "let a = 1;\nblcok b() { }",
        "E0101",
        &format!("{item} or end of file, found `blcok`"),
        "2:1",
        Some("did you mean `block`?"),
    );
    // Short or distant words are not "corrected" (`x` is 2 edits from `fn`, `def` from `let`).
    for src in ["x = 1;", "def f(x):", "modelling m() { }"] {
        let (d, _) = err(src);
        assert_eq!(d.help, None, "{src}: {:?}", d.help);
    }
}

#[test]
fn keyword_as_name() {
    for (src, loc) in [
        ("let for = 1;", "1:5"),
        ("fn if(a: int) = a;", "1:4"),
        ("block b(in: int) { }", "1:9"),
        ("model m() { x = f(as=1); }", "1:19"),
    ] {
        let (d, text) = err(src);
        assert_eq!(d.code, "E0106", "{src}: {}", d.message);
        assert!(d.message.contains("found keyword"), "{}", d.message);
        assert!(text.contains(&format!("t.bb:{loc}")), "{src}\n{text}");
    }
}

#[test]
fn every_keyword_is_reserved_and_type_names_are_not() {
    for kw in bbc_grammar::parser::KEYWORDS {
        let (d, _) = err(&format!("fn f({kw}: int) = 1;"));
        assert_eq!(d.code, "E0106", "{kw}: {}", d.message);
    }
    for name in [
        "bb", "tensor", "int", "layer", "f32", "_x", "inputs", "iff", "seq2",
    ] {
        ok(&format!("let {name} = {name};"));
    }
}

#[test]
fn literal_errors() {
    let (d, text) = err("let x = \"abc;\nlet y = 1;\n");
    assert_eq!(d.code, "E0102");
    assert!(text.contains("t.bb:1:9"), "{text}");
    let (d, _) = err("let x = \"abc {y");
    assert_eq!(d.code, "E0102");
    let (d, _) = err("model m() { ignore \"abc\\\"; }");
    assert_eq!(d.code, "E0102");

    let (d, text) = err("let x = 99999999999999999999;");
    assert_eq!(d.code, "E0103");
    assert!(text.contains("t.bb:1:9"), "{text}");
    assert_eq!(e("9223372036854775807"), "9223372036854775807");
    let (d, _) = err("let x = 1e999;");
    assert_eq!(d.code, "E0103");

    let (d, text) = err("let x = \"a\\qb\";");
    assert_eq!(d.code, "E0105");
    assert!(text.contains("t.bb:1:11"), "{text}");

    let (d, _) = err("let x = \"a}b\";");
    assert_eq!(d.code, "E0101");
    assert!(d.message.contains("unmatched `}`"), "{}", d.message);
}

#[test]
fn chained_comparisons_are_rejected() {
    let (d, text) = err("let x = a < b < c;");
    assert_eq!(d.code, "E0101");
    assert!(d.message.contains("cannot be chained"), "{}", d.message);
    assert!(text.contains("t.bb:1:15"), "{text}");
    let (d, _) = err("let x = 0..1..2;");
    assert!(d.message.contains("range"), "{}", d.message);
}

#[test]
fn nesting_limits() {
    // At the limit: fine.
    let n = 200;
    ok(&format!("let x = {}1{};", "(".repeat(n), ")".repeat(n)));
    ok(&format!("let x = {}1{};", "[".repeat(n), "]".repeat(n)));
    ok(&format!("let x = {}1{};", "f(".repeat(n), ")".repeat(n)));
    // Beyond it: E0104, not a crash.
    for src in [
        format!("let x = {}1{};", "(".repeat(n + 1), ")".repeat(n + 1)),
        format!("let x = {}", "[".repeat(100_000)),
        format!("let x = \"{}", "{\"".repeat(5_000)),
        format!("model m() {{ {} }}", "if a { ".repeat(10_000)),
    ] {
        let (d, text) = err(&src);
        assert_eq!(d.code, "E0104", "{}", d.message);
        assert!(text.contains("t.bb:1:"), "{text}");
    }
    // Deep trees without brackets: long operator chains and else-if chains.
    for src in [
        format!("let x = 1{};", " + 1".repeat(50_000)),
        format!("let x = {}1;", "-".repeat(50_000)),
        format!("let x = 2{};", " ** 2".repeat(50_000)),
        format!("let x = a{};", " |> f()".repeat(50_000)),
        format!("let x = a{};", ".b".repeat(50_000)),
        format!("let x = {}{{ 1 }};", "if c { 1 } else ".repeat(20_000)),
        format!(
            "model m() {{ if c {{ }}{} }}",
            " else if c { }".repeat(20_000)
        ),
    ] {
        let (d, _) = err(&src);
        assert_eq!(d.code, "E0104", "{}", d.message);
    }
    // Moderate chains are fine.
    ok(&format!("let x = 1{};", " + 1".repeat(300)));
}

// ------------------------------------------------------------------ robustness

/// Tiny deterministic PRNG (no extra dependency).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn check_no_panic(sm: &mut SourceMap, text: String) {
    let f = sm.add("fuzz.bb", text);
    if let Err(ds) = parse(sm, f) {
        for d in &ds {
            assert_eq!(d.phase, Phase::Syntax);
            assert!(
                !d.message.contains("internal"),
                "{}\n{}",
                sm.text(f),
                d.render(sm)
            );
            let _ = d.render(sm);
        }
    }
}

#[test]
fn truncations_and_mutations_never_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/examples");
    let pieces = [
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        "\"",
        "\\",
        "#",
        ";",
        ",",
        "@",
        "|>",
        "..",
        "**",
        "-",
        "=",
        "==",
        "if ",
        "else ",
        "for ",
        "seq ",
        "_",
        "1e",
        "99999999999999999999",
        "\n",
        "é",
        "{{",
        "}}",
        "=>",
    ];
    let mut rng = Lcg(0x5eed);
    let mut sm = SourceMap::new();
    for name in [
        "convnext_atto.bb",
        "deep_sets.bb",
        "efficientnet.bb",
        "inline_snippets.bb",
    ] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        // Every prefix (at char boundaries), then every suffix, stepping to keep it quick.
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        for &i in bounds.iter().step_by(3) {
            check_no_panic(&mut sm, text[..i].to_string());
            check_no_panic(&mut sm, text[i..].to_string());
        }
        // Random edits: delete, insert or replace a few spots.
        for _ in 0..1500 {
            let mut t = text.clone();
            for _ in 0..1 + rng.below(3) {
                let cuts: Vec<usize> = t.char_indices().map(|(i, _)| i).chain([t.len()]).collect();
                let at = cuts[rng.below(cuts.len())];
                match rng.below(3) {
                    0 => {
                        let end = t[at..].chars().next().map_or(at, |c| at + c.len_utf8());
                        t.replace_range(at..end, "");
                    }
                    1 => t.insert_str(at, pieces[rng.below(pieces.len())]),
                    _ => {
                        let end = t[at..].chars().next().map_or(at, |c| at + c.len_utf8());
                        t.replace_range(at..end, pieces[rng.below(pieces.len())]);
                    }
                }
            }
            check_no_panic(&mut sm, t);
        }
    }
    // Raw bytes that are not even plausible source.
    for _ in 0..500 {
        let len = rng.below(200);
        let t: String = (0..len).map(|_| char::from(rng.below(128) as u8)).collect();
        check_no_panic(&mut sm, t);
    }
}
