//! The owned syntax tree of a `.bb` file. Every node carries the [`Span`] it came from.
//!
//! The tree is exactly what was written: pipes, tags and `seq` stay as they are, and
//! elaboration (in `bbc-compiler`) gives them meaning.

use crate::source::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A whole file: an optional `bb 0.1;` version line, then items.
#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub version: Option<(String, Span)>,
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `import "path.bb";` or `import "path.bb" as name;`
    Import {
        path: String,
        path_span: Span,
        alias: Option<Ident>,
        span: Span,
    },
    /// `let NAME = expr;` (or a tuple pattern) at top level.
    Let {
        pat: Pattern,
        value: Expr,
        span: Span,
    },
    Fn(FnDef),
    Block(BlockDef),
    Model(ModelDef),
    /// `model name = base(k=v, ...);`
    Variant(ModelVariant),
}

impl Item {
    pub fn span(&self) -> Span {
        match self {
            Item::Import { span, .. } | Item::Let { span, .. } => *span,
            Item::Fn(f) => f.span,
            Item::Block(b) => b.span,
            Item::Model(m) => m.span,
            Item::Variant(v) => v.span,
        }
    }
}

/// `fn name(a: int, ...) -> int = expr;`
#[derive(Clone, Debug, PartialEq)]
pub struct FnDef {
    pub name: Ident,
    pub params: Vec<ParamDecl>,
    pub ret: Option<TypeExpr>,
    pub body: Expr,
    pub span: Span,
}

/// `block name(x: tensor[B, C, H, W], k: int = 7) -> tensor[...] { body }`
#[derive(Clone, Debug, PartialEq)]
pub struct BlockDef {
    pub name: Ident,
    pub params: Vec<ParamDecl>,
    pub ret: Option<TypeExpr>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// `model name(hyper: int = 1, ...) { body }`
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDef {
    pub name: Ident,
    pub params: Vec<ParamDecl>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// `model name = base(k=v, ...);`, or with its own parameters,
/// `model name(phi: int) = base(width=1.1 ** phi);` (a rule-generated family member).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelVariant {
    pub name: Ident,
    /// The variant's own parameters, usable in `args`; empty for `model name = base(...)`.
    pub params: Vec<ParamDecl>,
    pub base: Ident,
    pub args: Vec<Arg>,
    pub span: Span,
}

/// A formal parameter of a `fn`, `block` or `model`.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    pub name: Ident,
    pub ty: Option<TypeExpr>,
    pub default: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TypeExpr {
    pub kind: TypeKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TypeKind {
    Int,
    Float,
    Bool,
    Str,
    /// `layer`: a `seq { }` or partially applied op/block.
    Layer,
    /// `tensor` or `tensor[d0, d1, ...]`. In a block parameter each dim is a pattern: an unbound
    /// identifier binds the actual size, anything else is an expression the size must equal,
    /// and `_` matches any size.
    Tensor(Option<Vec<Expr>>),
    /// `[T]`
    List(Box<TypeExpr>),
    /// `(T1, T2, ...)`
    Tuple(Vec<TypeExpr>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    /// `input x: f32[B=1, 3, H=224, W=224];`
    Input {
        name: Ident,
        dtype: Ident,
        dims: Vec<InputDim>,
    },
    /// `output name = expr;`
    Output { name: Ident, value: Expr },
    /// `let pat = expr;`: compile-time binding.
    Let { pat: Pattern, value: Expr },
    /// `pat = expr;`: graph binding (its name is the default path segment of the call).
    Assign { pat: Pattern, value: Expr },
    /// `for pat in iter [as "path.{i}"] { body }`
    For {
        pat: Pattern,
        iter: Expr,
        path: Option<StrLit>,
        body: Vec<Stmt>,
    },
    /// `if cond { } else { }`; `else if` is an `else` holding one `If`.
    If {
        cond: Expr,
        then: Vec<Stmt>,
        otherwise: Option<Vec<Stmt>>,
    },
    /// `scope "a.b" { body }`
    Scope { path: StrLit, body: Vec<Stmt> },
    /// `assert cond, "message";`
    Assert { cond: Expr, message: Option<Expr> },
    /// `return expr;`
    Return { value: Expr },
    /// `param|buffer|const name: f32[dims] [= init];`
    Decl {
        kind: DeclKind,
        name: Ident,
        dtype: Ident,
        dims: Vec<Expr>,
        init: Option<Expr>,
    },
    /// `rename "regex" => "replacement";`
    Rename {
        from: String,
        from_span: Span,
        to: String,
    },
    /// `ignore "regex";`
    Ignore { pattern: String, pattern_span: Span },
    /// A bare expression: an element of a `seq { }` body.
    Expr(Expr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclKind {
    /// A learned tensor: in the state_dict, counted as a parameter.
    Param,
    /// Saved but not learned (running statistics, filter banks): in the state_dict.
    Buffer,
    /// Compiled in, never in the state_dict.
    Const,
}

/// One dimension of an `input` shape: `3`, `B`, or `H=224`.
#[derive(Clone, Debug, PartialEq)]
pub struct InputDim {
    pub name: Option<Ident>,
    pub value: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Pattern {
    Ident(Ident),
    /// `_`
    Wildcard(Span),
    /// `(a, (b, c))`
    Tuple(Vec<Pattern>, Span),
}

impl Pattern {
    pub fn span(&self) -> Span {
        match self {
            Pattern::Ident(i) => i.span,
            Pattern::Wildcard(s) | Pattern::Tuple(_, s) => *s,
        }
    }
}

/// A string literal. In expression position `{expr}` parts are interpolated; `{{` and `}}`
/// are literal braces.
#[derive(Clone, Debug, PartialEq)]
pub struct StrLit {
    pub parts: Vec<StrPart>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StrPart {
    Text(String),
    Interp(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
    /// `++`: list concatenation.
    Concat,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    /// `a..b`: half-open integer range.
    Range,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::FloorDiv => "//",
            BinOp::Mod => "%",
            BinOp::Pow => "**",
            BinOp::Concat => "++",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "&&",
            BinOp::Or => "||",
            BinOp::Range => "..",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    /// `none` (Python's `None`).
    None,
    Str(StrLit),
    Ident(String),
    List(Vec<Expr>),
    /// `(a, b)`; `(a,)` is a one-element tuple, `(a)` just `a`.
    Tuple(Vec<Expr>),
    /// `[elem for pat in iter if cond ...]`
    Comprehension {
        elem: Box<Expr>,
        clauses: Vec<CompClause>,
    },
    Unary {
        op: UnOp,
        expr: Box<Expr>,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Call {
        callee: Box<Expr>,
        args: Vec<Arg>,
    },
    Index {
        base: Box<Expr>,
        index: Box<Expr>,
    },
    /// `module.name` (names from an `import ... as module`).
    Field {
        base: Box<Expr>,
        name: Ident,
    },
    /// `lhs |> rhs`: `rhs` is a call `f(args)` (becoming `f(lhs, args)`) or a layer value.
    Pipe {
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `if c { a } else { b }`
    If {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
    /// `seq { e1; e2; for ... { } if ... { } }`
    Seq(Vec<Stmt>),
    /// `expr @"tag"`; `tag == None` is `@_` (no path segment).
    Tagged {
        expr: Box<Expr>,
        tag: Option<StrLit>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum CompClause {
    For { pat: Pattern, iter: Expr },
    If(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub kind: ArgKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ArgKind {
    Positional(Expr),
    Keyword(Ident, Expr),
    /// `..xs`: the elements of a list or tuple as positional arguments.
    Spread(Expr),
}
