//! The op table: the single place where an op is defined.
//!
//! Each [`OpDef`] gives an op's signature (arguments, kinds, defaults), the parameters it owns
//! (PyTorch leaf names, shapes and default initialisation), its shape rule, its FLOP count and
//! its reference implementation over ndarray. Elaboration, the verifier, `bbc stats`, weight
//! checking and the interpreter all read this table; none of them special-cases an op.
//!
//! A graph node's inputs are its tensor arguments in signature order (a tensor-list argument
//! contributes all its elements), followed by its owned parameters in [`OpDef::params`] order.

mod activation;
mod common;
mod conv;
mod elementwise;
pub(crate) mod layout;
mod linear;
mod norm;
pub(crate) mod pool;
mod quality;
mod reduce;
mod source;
mod wavelet;

/// The f64 error function the `gelu` reference uses (accurate to about 1e-15), shared with
/// the tests that measure the code generator's approximation.
pub use activation::erf;

use ndarray::ArrayD;
use std::collections::BTreeMap;
use std::fmt;

/// A static tensor shape.
pub type Shape = Vec<usize>;

/// A non-tensor argument value, after elaboration.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    None,
}

/// Attributes of one node, by argument name (sorted, so printing is stable).
pub type Attrs = BTreeMap<String, Attr>;

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attr::Int(v) => write!(f, "{v}"),
            Attr::Float(v) => write!(f, "{}", format_float(*v)),
            Attr::Bool(v) => write!(f, "{v}"),
            Attr::Str(s) => write!(f, "{s:?}"),
            Attr::Ints(v) => {
                let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
                write!(f, "[{}]", items.join(", "))
            }
            Attr::Floats(v) => {
                let items: Vec<String> = v.iter().map(|x| format_float(*x)).collect();
                write!(f, "[{}]", items.join(", "))
            }
            Attr::None => write!(f, "none"),
        }
    }
}

/// Shortest text that reads back as the same f64, always with a `.` or exponent.
pub fn format_float(v: f64) -> String {
    let s = format!("{v:?}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

/// Typed accessors used by shape rules and kernels. Elaboration guarantees every argument in
/// the signature is present with its declared kind, so a missing one is a bug, not user error.
pub trait AttrsExt {
    fn int(&self, name: &str) -> i64;
    fn float(&self, name: &str) -> f64;
    fn flag(&self, name: &str) -> bool;
    fn str(&self, name: &str) -> &str;
    fn ints(&self, name: &str) -> &[i64];
    fn is_none(&self, name: &str) -> bool;
}

impl AttrsExt for Attrs {
    fn int(&self, name: &str) -> i64 {
        match self.get(name) {
            Some(Attr::Int(v)) => *v,
            other => panic!("attribute `{name}` is not an int: {other:?}"),
        }
    }
    fn float(&self, name: &str) -> f64 {
        match self.get(name) {
            Some(Attr::Float(v)) => *v,
            Some(Attr::Int(v)) => *v as f64,
            other => panic!("attribute `{name}` is not a float: {other:?}"),
        }
    }
    fn flag(&self, name: &str) -> bool {
        match self.get(name) {
            Some(Attr::Bool(v)) => *v,
            other => panic!("attribute `{name}` is not a bool: {other:?}"),
        }
    }
    fn str(&self, name: &str) -> &str {
        match self.get(name) {
            Some(Attr::Str(v)) => v,
            other => panic!("attribute `{name}` is not a string: {other:?}"),
        }
    }
    fn ints(&self, name: &str) -> &[i64] {
        match self.get(name) {
            Some(Attr::Ints(v)) => v,
            other => panic!("attribute `{name}` is not an int list: {other:?}"),
        }
    }
    fn is_none(&self, name: &str) -> bool {
        matches!(self.get(name), None | Some(Attr::None))
    }
}

/// The kind of one argument in an op's signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgType {
    /// One tensor: becomes a node input.
    Tensor,
    /// A list of tensors: each becomes a node input (e.g. `concat`).
    Tensors,
    Int,
    Float,
    Bool,
    Str,
    /// A list of ints (a single int is accepted as a one-element list).
    Ints,
    /// An int or a pair of ints (`k=3` or `k=(3, 5)`), stored as two ints.
    Pair,
    /// An int, or `none`.
    OptInt,
    /// A pair of ints, or `none`.
    OptPair,
    /// A float, or `none`.
    OptFloat,
}

/// The default of an argument; `Required` means the caller must pass it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Default {
    Required,
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(&'static str),
    /// `none`
    None,
    /// The same value as another argument (e.g. `max_pool2d`'s stride defaults to `k`).
    SameAs(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub struct ArgSpec {
    pub name: &'static str,
    pub ty: ArgType,
    pub default: Default,
    /// For `Str` arguments: the accepted values (empty = any string).
    pub choices: &'static [&'static str],
    /// For `Tensor` arguments: an int or a float is accepted too, as a scalar tensor, as the
    /// operands of `+` and `*` are.
    pub number: bool,
}

/// Shorthand for table entries.
pub const fn arg(name: &'static str, ty: ArgType, default: Default) -> ArgSpec {
    ArgSpec {
        name,
        ty,
        default,
        choices: &[],
        number: false,
    }
}

/// A required tensor argument that also takes a number (a scalar tensor): `maximum(x, 0.0)`.
pub const fn operand(name: &'static str) -> ArgSpec {
    ArgSpec {
        number: true,
        ..arg(name, ArgType::Tensor, Default::Required)
    }
}

/// A string argument restricted to `choices`.
pub const fn choice(
    name: &'static str,
    default: &'static str,
    choices: &'static [&'static str],
) -> ArgSpec {
    ArgSpec {
        name,
        ty: ArgType::Str,
        default: Default::Str(default),
        choices,
        number: false,
    }
}

/// Whether an owned tensor is learned (`parameters()`) or only saved (`buffers()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    Param,
    Buffer,
}

/// How an owned tensor is initialised when no checkpoint is given (PyTorch's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Fill(f64),
    /// U(-bound, bound)
    Uniform(f64),
    /// N(0, std)
    Normal(f64),
    /// N(0, std) truncated to [-2, 2] (timm's `trunc_normal_` default limits)
    TruncNormal(f64),
}

/// A tensor an op owns: its PyTorch leaf name, shape, kind and default initialisation.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub shape: Shape,
    pub kind: ParamKind,
    pub init: Init,
}

/// Owned parameters, from attributes and the shapes of the tensor arguments.
pub type ParamsFn = fn(&Attrs, &[Shape]) -> Vec<ParamSpec>;
/// Result shape, from attributes and the shapes of the tensor arguments (not the params).
pub type ShapeFn = fn(&Attrs, &[Shape]) -> Result<Shape, String>;
/// Multiply-adds count as 2 FLOPs; arguments are attrs, tensor-argument shapes, result shape.
pub type FlopsFn = fn(&Attrs, &[Shape], &Shape) -> u64;
/// Reference implementation: attrs and all node inputs (tensor arguments, then owned params).
pub type EvalFn = fn(&Attrs, &[&ArrayD<f32>]) -> ArrayD<f32>;

pub struct OpDef {
    pub name: &'static str,
    /// One line for `bbc` help and the language reference.
    pub doc: &'static str,
    pub args: &'static [ArgSpec],
    pub params: ParamsFn,
    pub shape: ShapeFn,
    pub flops: FlopsFn,
    pub eval: EvalFn,
}

impl OpDef {
    pub fn arg(&self, name: &str) -> Option<&ArgSpec> {
        self.args.iter().find(|a| a.name == name)
    }

    /// Whether this op owns parameters for the given attributes (e.g. `conv2d` always does).
    pub fn owns_params(&self, attrs: &Attrs, inputs: &[Shape]) -> bool {
        !(self.params)(attrs, inputs).is_empty()
    }
}

impl fmt::Debug for OpDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpDef({})", self.name)
    }
}

/// For ops that own nothing.
pub fn no_params(_: &Attrs, _: &[Shape]) -> Vec<ParamSpec> {
    Vec::new()
}

/// For ops that cost nothing worth counting (layout changes, identities).
pub fn no_flops(_: &Attrs, _: &[Shape], _: &Shape) -> u64 {
    0
}

/// One FLOP per output element.
pub fn flops_per_output(_: &Attrs, _: &[Shape], out: &Shape) -> u64 {
    out.iter().product::<usize>() as u64
}

/// Every op, in the order the language reference lists them.
pub fn table() -> impl Iterator<Item = &'static OpDef> {
    [
        source::OPS,
        elementwise::OPS,
        activation::OPS,
        linear::OPS,
        conv::OPS,
        norm::OPS,
        pool::OPS,
        reduce::OPS,
        layout::OPS,
        wavelet::OPS,
        quality::OPS,
    ]
    .into_iter()
    .flat_map(|ops| ops.iter())
}

pub fn lookup(name: &str) -> Option<&'static OpDef> {
    table().find(|op| op.name == name)
}
