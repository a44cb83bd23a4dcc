//! Compile-time values: what `.bb` expressions evaluate to during elaboration.

use crate::ir::ValueId;
use crate::ops::OpDef;
use bbc_grammar::ast::{BlockDef, FnDef, ModelDef, ModelVariant, Stmt};
use bbc_grammar::Span;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

#[derive(Clone, Debug)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(Rc<str>),
    None,
    List(Rc<Vec<Value>>),
    Tuple(Rc<Vec<Value>>),
    /// A graph value (its shape lives on the graph node).
    Tensor(ValueId),
    /// A `seq { }` or a partially applied op/block, waiting for its tensor input.
    Layer(Rc<Layer>),
    Callable(Callable),
    /// An `import ... as name` module.
    Module(usize),
    /// The result of an expression that already reported an error: using it reports nothing
    /// more, so one mistake gives one diagnostic.
    Poison,
}

impl Value {
    pub fn list(items: Vec<Value>) -> Value {
        Value::List(Rc::new(items))
    }

    pub fn str(s: impl Into<Rc<str>>) -> Value {
        Value::Str(s.into())
    }

    /// The type name with its article, for messages: "an int", "a list".
    pub fn a_type(&self) -> String {
        let t = self.type_name();
        let article = if t.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {t}")
    }

    /// The user-facing name of this value's type, for diagnostics.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
            Value::Str(_) => "str",
            Value::None => "none",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Tensor(_) => "tensor",
            Value::Layer(_) => "layer",
            Value::Callable(_) => "function",
            Value::Module(_) => "module",
            Value::Poison => "<error>",
        }
    }

    /// Elements of a list or tuple.
    pub fn items(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{}", crate::ops::format_float(*x)),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Str(s) => f.write_str(s),
            Value::None => f.write_str("none"),
            Value::List(items) | Value::Tuple(items) => {
                let (open, close) = if matches!(self, Value::List(_)) {
                    ("[", "]")
                } else {
                    ("(", ")")
                };
                f.write_str(open)?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str(close)
            }
            Value::Tensor(_) => f.write_str("<tensor>"),
            Value::Layer(_) => f.write_str("<layer>"),
            Value::Callable(c) => write!(f, "<{}>", c.name()),
            Value::Module(_) => f.write_str("<module>"),
            Value::Poison => f.write_str("<error>"),
        }
    }
}

/// Something that can be called.
#[derive(Clone, Debug)]
pub enum Callable {
    Op(&'static OpDef),
    Builtin(&'static str),
    Fn {
        module: usize,
        def: Rc<FnDef>,
    },
    Block {
        module: usize,
        def: Rc<BlockDef>,
    },
    Model {
        module: usize,
        def: Rc<ModelDef>,
    },
    Variant {
        module: usize,
        def: Rc<ModelVariant>,
    },
}

impl Callable {
    pub fn name(&self) -> &str {
        match self {
            Callable::Op(op) => op.name,
            Callable::Builtin(name) => name,
            Callable::Fn { def, .. } => &def.name.name,
            Callable::Block { def, .. } => &def.name.name,
            Callable::Model { def, .. } => &def.name.name,
            Callable::Variant { def, .. } => &def.name.name,
        }
    }
}

/// One segment of a parameter path.
#[derive(Clone, Debug, PartialEq)]
pub enum Segment {
    Name(String),
    /// A parameter-owning call that was given no name: an error if it declares anything.
    Unnamed(Span),
}

/// How the value being evaluated is named: the binding or tag it is the right-hand side of.
#[derive(Clone, Debug, PartialEq)]
pub enum Hint {
    /// Not the outermost call of a binding: a parameterised call here has no name.
    None,
    /// `@_`: add no path segment.
    Anonymous,
    /// One or more segments (`@"blocks.{j}"` gives two).
    Path(Vec<String>),
}

/// A layer value: applying it to a tensor runs its body under the path it was bound at, so
/// applying the same layer value twice shares its parameters.
#[derive(Debug)]
pub struct Layer {
    pub id: u32,
    pub kind: LayerKind,
    /// The parameter path where the layer was created.
    pub base: Vec<Segment>,
    /// Its own segment(s) under `base`.
    pub hint: Hint,
    pub span: Span,
}

#[derive(Debug)]
pub enum LayerKind {
    /// `seq { ... }` with the local bindings it closed over.
    Seq {
        body: Rc<Vec<Stmt>>,
        module: usize,
        locals: HashMap<String, Value>,
    },
    /// `f(args)` missing its tensor input; applying it calls `f(input, args)`.
    Partial {
        callee: Callable,
        args: Vec<ArgValue>,
    },
}

/// An evaluated call argument.
#[derive(Clone, Debug)]
pub struct ArgValue {
    pub name: Option<String>,
    pub value: Value,
    pub span: Span,
    /// Where the value was written when that is not at `span`: the command line's
    /// `--arg NAME=VALUE`, whose span is the model it was given to.
    pub origin: Option<Rc<str>>,
}
