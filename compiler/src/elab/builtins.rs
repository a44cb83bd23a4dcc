//! Compile-time built-in functions (Python semantics) and the tensor built-ins that expand
//! into several ops (`chunk`, `split`, `rearrange`, `broadcast`).

use super::codes;
use super::einops;
use super::eval::{floor_div, Elab, Reported, R};
use super::value::{ArgValue, Hint, Value};
use crate::ops::{self, Attr, Attrs};
use bbc_grammar::{Phase, Span};
use std::rc::Rc;

/// Every built-in name, for resolution and "did you mean".
pub const NAMES: &[&str] = &[
    "len",
    "range",
    "enumerate",
    "reversed",
    "zip",
    "min",
    "max",
    "sum",
    "abs",
    "floor",
    "ceil",
    "round",
    "int",
    "float",
    "str",
    "make_divisible",
    "shape",
    "rank",
    "chunk",
    "split",
    "rearrange",
    "broadcast",
];

pub fn is_builtin(name: &str) -> bool {
    NAMES.contains(&name)
}

/// The `'static` spelling of a built-in name.
pub fn canonical(name: &str) -> &'static str {
    NAMES
        .iter()
        .find(|n| **n == name)
        .copied()
        .expect("checked by is_builtin")
}

/// Positional and keyword arguments of a built-in call.
struct Args<'a> {
    name: &'static str,
    pos: Vec<&'a ArgValue>,
    kw: Vec<&'a ArgValue>,
    span: Span,
}

impl<'a> Args<'a> {
    fn new(name: &'static str, args: &'a [ArgValue], span: Span) -> Args<'a> {
        Args {
            name,
            pos: args.iter().filter(|a| a.name.is_none()).collect(),
            kw: args.iter().filter(|a| a.name.is_some()).collect(),
            span,
        }
    }

    fn kw(&self, key: &str) -> Option<&'a ArgValue> {
        self.kw
            .iter()
            .copied()
            .find(|a| a.name.as_deref() == Some(key))
    }

    /// Rejects keywords outside `allowed` and a positional count outside `min..=max`.
    fn check(&self, e: &mut Elab, min: usize, max: usize, allowed: &[&str]) -> R<()> {
        if let Some(bad) = self
            .kw
            .iter()
            .find(|a| !allowed.contains(&a.name.as_deref().unwrap_or("")))
        {
            let k = bad.name.clone().unwrap_or_default();
            return Err(e.error(
                Phase::Resolution,
                codes::BAD_ARG,
                bad.span,
                format!("`{}` has no argument `{k}`", self.name),
                "unknown keyword argument",
            ));
        }
        if self.pos.len() < min || self.pos.len() > max {
            let want = if min == max {
                format!("{min}")
            } else {
                format!("{min} to {max}")
            };
            return Err(e.error(
                Phase::Elaboration,
                codes::BAD_VALUE,
                self.span,
                format!(
                    "`{}` takes {want} positional arguments, {} given",
                    self.name,
                    self.pos.len()
                ),
                "in this call",
            ));
        }
        Ok(())
    }
}

fn number(e: &mut Elab, a: &ArgValue, what: &str) -> R<f64> {
    a.value.as_f64().ok_or_else(|| {
        e.error(
            Phase::Elaboration,
            codes::TYPE,
            a.span,
            format!("{what} must be a number, found {}", a.value.type_name()),
            "not a number",
        )
    })
}

fn list_arg(e: &mut Elab, a: &ArgValue) -> R<Vec<Value>> {
    e.iterate(&a.value, a.span)
}

fn tensor(e: &mut Elab, a: &ArgValue, what: &str) -> R<crate::ir::ValueId> {
    match a.value {
        Value::Tensor(t) => Ok(t),
        Value::Poison => Err(Reported),
        ref other => Err(e.error(
            Phase::Elaboration,
            codes::TYPE,
            a.span,
            format!("{what} must be a tensor, found {}", other.type_name()),
            "not a tensor",
        )),
    }
}

fn to_int(e: &mut Elab, f: f64, span: Span) -> R<Value> {
    if !f.is_finite() || f.abs() >= 9.2e18 {
        return Err(e.overflow(span));
    }
    Ok(Value::Int(f as i64))
}

/// Python's `round(x)`: half to even.
pub fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// timm's `make_divisible`.
pub fn make_divisible(v: f64, divisor: i64, min_value: Option<i64>, round_limit: f64) -> i64 {
    let min_value = min_value.unwrap_or(divisor);
    let d = divisor as f64;
    let new_v = min_value.max(floor_div((v + d / 2.0) as i64, divisor) * divisor);
    if (new_v as f64) < round_limit * v {
        new_v + divisor
    } else {
        new_v
    }
}

pub fn call(
    e: &mut Elab,
    name: &'static str,
    args: Vec<ArgValue>,
    span: Span,
    hint: Hint,
) -> R<Value> {
    let a = Args::new(name, &args, span);
    match name {
        "len" => {
            a.check(e, 1, 1, &[])?;
            let n = match &a.pos[0].value {
                Value::List(v) | Value::Tuple(v) => v.len(),
                Value::Str(s) => s.chars().count(),
                other => {
                    return Err(e.error(
                        Phase::Elaboration,
                        codes::TYPE,
                        a.pos[0].span,
                        format!("`len` of a {}", other.type_name()),
                        "expected a list, tuple or string",
                    ));
                }
            };
            Ok(Value::Int(n as i64))
        }
        "range" => {
            a.check(e, 1, 3, &[])?;
            let mut ints = Vec::new();
            for p in &a.pos {
                ints.push(e.expect_int(&p.value, p.span, "a range bound")?);
            }
            let (start, stop, step) = match ints[..] {
                [n] => (0, n, 1),
                [s, n] => (s, n, 1),
                [s, n, st] => (s, n, st),
                _ => unreachable!("checked 1..=3 arguments"),
            };
            if step == 0 {
                return Err(e.error(
                    Phase::Elaboration,
                    codes::BAD_VALUE,
                    span,
                    "range step must not be zero",
                    "step is 0",
                ));
            }
            // i128: the length of any i64 range fits, so extreme bounds cannot overflow.
            let (start, stop, step) = (start as i128, stop as i128, step as i128);
            let n = if step > 0 {
                (stop - start + step - 1).max(0) / step
            } else {
                (start - stop - step - 1).max(0) / -step
            };
            if n > super::eval::MAX_LIST as i128 {
                return Err(e.error(
                    Phase::Elaboration,
                    codes::LIMIT,
                    span,
                    format!("range of {n} elements is too long"),
                    "here",
                ));
            }
            e.charge(n as u64, span)?;
            Ok(Value::list(
                (0..n)
                    .map(|i| Value::Int((start + i * step) as i64))
                    .collect(),
            ))
        }
        "enumerate" => {
            a.check(e, 1, 1, &["start"])?;
            let start = match a.kw("start") {
                Some(s) => e.expect_int(&s.value, s.span, "`start`")?,
                None => 0,
            };
            let items = list_arg(e, a.pos[0])?;
            if start.checked_add(items.len() as i64).is_none() {
                return Err(e.overflow(span));
            }
            Ok(Value::list(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| Value::Tuple(Rc::new(vec![Value::Int(start + i as i64), v])))
                    .collect(),
            ))
        }
        "reversed" => {
            a.check(e, 1, 1, &[])?;
            let mut items = list_arg(e, a.pos[0])?;
            items.reverse();
            Ok(Value::list(items))
        }
        "zip" => {
            a.check(e, 1, 16, &[])?;
            let lists = a
                .pos
                .iter()
                .map(|p| list_arg(e, p))
                .collect::<R<Vec<_>>>()?;
            let n = lists.iter().map(Vec::len).min().unwrap_or(0);
            Ok(Value::list(
                (0..n)
                    .map(|i| Value::Tuple(Rc::new(lists.iter().map(|l| l[i].clone()).collect())))
                    .collect(),
            ))
        }
        "min" | "max" | "sum" => {
            a.check(e, 1, 64, &[])?;
            let items: Vec<Value> = if a.pos.len() == 1 {
                list_arg(e, a.pos[0])?
            } else {
                a.pos.iter().map(|p| p.value.clone()).collect()
            };
            if items.is_empty() && name != "sum" {
                return Err(e.error(
                    Phase::Elaboration,
                    codes::BAD_VALUE,
                    span,
                    format!("`{name}` of an empty list"),
                    "empty",
                ));
            }
            let mut nums = Vec::new();
            for v in &items {
                match v.as_f64() {
                    Some(f) => nums.push(f),
                    None => {
                        return Err(e.error(
                            Phase::Elaboration,
                            codes::TYPE,
                            span,
                            format!("`{name}` needs numbers, found {}", v.a_type()),
                            "here",
                        ))
                    }
                }
            }
            if name == "sum" {
                if items.iter().all(|v| matches!(v, Value::Int(_))) {
                    let mut acc: i64 = 0;
                    for v in &items {
                        if let Value::Int(i) = v {
                            acc = acc.checked_add(*i).ok_or_else(|| e.overflow(span))?;
                        }
                    }
                    return Ok(Value::Int(acc));
                }
                return Ok(Value::Float(nums.iter().sum()));
            }
            let mut best = 0;
            for i in 1..nums.len() {
                if (name == "min" && nums[i] < nums[best])
                    || (name == "max" && nums[i] > nums[best])
                {
                    best = i;
                }
            }
            Ok(items[best].clone())
        }
        "abs" => {
            a.check(e, 1, 1, &[])?;
            match a.pos[0].value {
                Value::Int(i) => i
                    .checked_abs()
                    .map(Value::Int)
                    .ok_or_else(|| e.overflow(span)),
                _ => Ok(Value::Float(number(e, a.pos[0], "the argument")?.abs())),
            }
        }
        "floor" | "ceil" => {
            a.check(e, 1, 1, &[])?;
            let x = number(e, a.pos[0], "the argument")?;
            to_int(e, if name == "floor" { x.floor() } else { x.ceil() }, span)
        }
        "round" => {
            a.check(e, 1, 2, &["ndigits"])?;
            let x = number(e, a.pos[0], "the argument")?;
            let nd = match a.pos.get(1).copied().or_else(|| a.kw("ndigits")) {
                Some(n) => Some(e.expect_int(&n.value, n.span, "`ndigits`")?),
                None => None,
            };
            match nd {
                None => to_int(e, round_half_even(x), span),
                // Python rounds the exact binary value: `round(2.675, 2)` is 2.67 because
                // 2.675 is stored as 2.67499999...; Rust's formatting does the same.
                Some(n) if (0..=300).contains(&n) => Ok(Value::Float(
                    format!("{x:.0$}", n as usize).parse().unwrap_or(x),
                )),
                Some(n) => {
                    let p = 10f64.powi(n.clamp(-300, 0) as i32);
                    Ok(Value::Float(round_half_even(x * p) / p))
                }
            }
        }
        "int" => {
            a.check(e, 1, 1, &[])?;
            match &a.pos[0].value {
                Value::Int(i) => Ok(Value::Int(*i)),
                Value::Bool(b) => Ok(Value::Int(*b as i64)),
                Value::Str(s) => s.trim().parse::<i64>().map(Value::Int).map_err(|_| {
                    e.error(
                        Phase::Elaboration,
                        codes::BAD_VALUE,
                        span,
                        format!("`{s}` is not an integer"),
                        "here",
                    )
                }),
                _ => {
                    let x = number(e, a.pos[0], "the argument")?;
                    to_int(e, x.trunc(), span)
                }
            }
        }
        "float" => {
            a.check(e, 1, 1, &[])?;
            Ok(Value::Float(number(e, a.pos[0], "the argument")?))
        }
        "str" => {
            a.check(e, 1, 1, &[])?;
            let text = a.pos[0].value.to_string();
            e.check_str_len(text.len(), span)?;
            Ok(Value::str(text))
        }
        "make_divisible" => {
            a.check(e, 1, 4, &["divisor", "min_value", "round_limit"])?;
            let get = |i: usize, k: &str| a.pos.get(i).copied().or_else(|| a.kw(k));
            let v = number(e, a.pos[0], "`v`")?;
            let divisor = match get(1, "divisor") {
                Some(d) => e.expect_int(&d.value, d.span, "`divisor`")?,
                None => 8,
            };
            if divisor <= 0 {
                return Err(e.error(
                    Phase::Elaboration,
                    codes::BAD_VALUE,
                    span,
                    "`divisor` must be positive",
                    "here",
                ));
            }
            let min_value = match get(2, "min_value") {
                Some(ArgValue {
                    value: Value::None, ..
                })
                | None => None,
                Some(m) => Some(e.expect_int(&m.value, m.span, "`min_value`")?),
            };
            let round_limit = match get(3, "round_limit") {
                Some(r) => number(e, r, "`round_limit`")?,
                None => 0.9,
            };
            if !v.is_finite() || v.abs() > 1e15 {
                return Err(e.overflow(span));
            }
            Ok(Value::Int(make_divisible(
                v,
                divisor,
                min_value,
                round_limit,
            )))
        }
        "shape" | "rank" => {
            a.check(e, 1, 1, &[])?;
            let t = tensor(e, a.pos[0], "the argument")?;
            let shape = e.shape_of(t).clone();
            Ok(if name == "rank" {
                Value::Int(shape.len() as i64)
            } else {
                Value::list(shape.iter().map(|&d| Value::Int(d as i64)).collect())
            })
        }
        "chunk" | "split" => {
            a.check(e, 2, 2, &["axis"])?;
            let t = tensor(e, a.pos[0], "the first argument")?;
            let shape = e.shape_of(t).clone();
            let axis = match a.kw("axis") {
                Some(ax) => e.expect_int(&ax.value, ax.span, "`axis`")?,
                None => 1,
            };
            let rank = shape.len() as i64;
            let ax = if axis < 0 { axis + rank } else { axis };
            if ax < 0 || ax >= rank {
                return Err(e.error(
                    Phase::Shape,
                    codes::SHAPE,
                    span,
                    format!("`{name}`: axis {axis} is out of range for a rank-{rank} tensor"),
                    "here",
                ));
            }
            let len = shape[ax as usize] as i64;
            let sizes: Vec<i64> = if name == "chunk" {
                let n = e.expect_int(&a.pos[1].value, a.pos[1].span, "the number of chunks")?;
                if n <= 0 || len % n != 0 {
                    return Err(e.error(Phase::Shape, codes::SHAPE, a.pos[1].span, format!("`chunk`: axis {axis} of size {len} does not split into {n} equal chunks"), "here"));
                }
                vec![len / n; n as usize]
            } else {
                let items = list_arg(e, a.pos[1])?;
                let mut sizes = Vec::new();
                for v in &items {
                    sizes.push(e.expect_int(v, a.pos[1].span, "a split size")?);
                }
                // Empty parts are allowed, as in PyTorch: a slice may be empty.
                let problem = if sizes.iter().any(|&s| s < 0) {
                    Some(format!("`split`: sizes {sizes:?} include a negative one"))
                } else if sizes.iter().sum::<i64>() != len {
                    Some(format!(
                        "`split`: sizes {sizes:?} do not add up to axis {axis} of size {len}"
                    ))
                } else {
                    None
                };
                if let Some(message) = problem {
                    return Err(e.error(
                        Phase::Shape,
                        codes::SHAPE,
                        a.pos[1].span,
                        message,
                        "here",
                    ));
                }
                sizes
            };
            let slice = ops::lookup("slice").expect("slice op");
            let mut out = Vec::new();
            let mut start = 0;
            for (i, s) in sizes.iter().enumerate() {
                let mut attrs = Attrs::new();
                attrs.insert("axis".into(), Attr::Int(ax));
                attrs.insert("start".into(), Attr::Int(start));
                attrs.insert("end".into(), Attr::Int(start + s));
                attrs.insert("step".into(), Attr::Int(1));
                let h = match &hint {
                    Hint::Path(p) => Hint::Path(vec![format!("{}.{i}", p.join("."))]),
                    _ => Hint::Path(vec![format!("{name}.{i}")]),
                };
                out.push(e.emit_op(slice, attrs, &[t], span, h)?);
                start += s;
            }
            Ok(Value::list(out))
        }
        "rearrange" | "broadcast" => {
            // Keywords are axis sizes (`h=8`), so any name is accepted.
            let names: Vec<&str> = a.kw.iter().filter_map(|k| k.name.as_deref()).collect();
            a.check(e, 2, 2, &names)?;
            let t = tensor(e, a.pos[0], "the first argument")?;
            let pattern = match &a.pos[1].value {
                Value::Str(s) => s.to_string(),
                other => {
                    return Err(e.error(
                        Phase::Elaboration,
                        codes::TYPE,
                        a.pos[1].span,
                        format!("the pattern must be a string, found {}", other.type_name()),
                        "here",
                    ))
                }
            };
            let mut sizes = Vec::new();
            for k in &a.kw {
                let v = e.expect_int(&k.value, k.span, "an axis size")?;
                sizes.push((k.name.clone().unwrap_or_default(), v));
            }
            einops::apply(
                e,
                name == "broadcast",
                t,
                &pattern,
                a.pos[1].span,
                &sizes,
                span,
                hint,
            )
        }
        _ => unreachable!("every name in NAMES is handled"),
    }
}
