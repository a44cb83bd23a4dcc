//! einops-style `rearrange(x, "b c (h p) w -> b h (p c) w", p=2)` and
//! `broadcast(z, "b k -> b k h w", h=8, w=8)`, lowered to reshape, permute and expand ops.

use super::codes;
use super::eval::{Elab, R};
use super::value::{Hint, Value};
use crate::ir::ValueId;
use crate::ops::{self, Attr, Attrs};
use bbc_grammar::{Phase, Span};
use std::collections::HashMap;

type Groups = Vec<Vec<String>>;

fn parse_side(side: &str) -> Result<Groups, String> {
    let mut groups = Vec::new();
    let mut current: Option<Vec<String>> = None;
    let mut chars = side.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '(' {
            if current.is_some() {
                return Err("nested parentheses are not allowed".into());
            }
            chars.next();
            current = Some(Vec::new());
        } else if c == ')' {
            chars.next();
            match current.take() {
                Some(g) if !g.is_empty() => groups.push(g),
                Some(_) => return Err("empty group `()`".into()),
                None => return Err("unmatched `)`".into()),
            }
        } else if c.is_ascii_alphanumeric() || c == '_' {
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if name.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                return Err(format!("`{name}`: axis names start with a letter"));
            }
            match &mut current {
                Some(g) => g.push(name),
                None => groups.push(vec![name]),
            }
        } else {
            return Err(format!("unexpected `{c}`"));
        }
    }
    if current.is_some() {
        return Err("unclosed `(`".into());
    }
    Ok(groups)
}

fn emit(e: &mut Elab, op: &str, attrs: Attrs, input: ValueId, span: Span) -> R<ValueId> {
    let def = ops::lookup(op).expect("layout op in table");
    match e.emit_op(def, attrs, &[input], span, Hint::None)? {
        Value::Tensor(t) => Ok(t),
        _ => unreachable!("emit_op yields a tensor"),
    }
}

fn ints_attr(key: &str, v: Vec<i64>) -> Attrs {
    let mut a = Attrs::new();
    a.insert(key.into(), Attr::Ints(v));
    a
}

#[allow(clippy::too_many_arguments)]
pub fn apply(
    e: &mut Elab,
    broadcast: bool,
    x: ValueId,
    pattern: &str,
    pattern_span: Span,
    sizes: &[(String, i64)],
    span: Span,
    hint: Hint,
) -> R<Value> {
    let fail = |e: &mut Elab, msg: String| {
        e.error(
            Phase::Shape,
            codes::SHAPE,
            pattern_span,
            format!("bad pattern \"{pattern}\""),
            msg,
        )
    };
    let Some((lhs, rhs)) = pattern.split_once("->") else {
        return Err(fail(e, "expected `input axes -> output axes`".into()));
    };
    let (lhs, rhs) = match (parse_side(lhs), parse_side(rhs)) {
        (Ok(l), Ok(r)) => (l, r),
        (Err(m), _) | (_, Err(m)) => return Err(fail(e, m)),
    };
    let shape = e.shape_of(x).clone();
    if lhs.len() != shape.len() {
        return Err(fail(
            e,
            format!(
                "the input has rank {} but the pattern names {} axes",
                shape.len(),
                lhs.len()
            ),
        ));
    }
    let mut known: HashMap<String, usize> = HashMap::new();
    for (k, v) in sizes {
        if *v <= 0 {
            return Err(fail(
                e,
                format!("axis `{k}` must have a positive size, got {v}"),
            ));
        }
        known.insert(k.clone(), *v as usize);
    }
    // Sizes of the input's elementary axes.
    let mut elems: Vec<(String, usize)> = Vec::new();
    for (group, &dim) in lhs.iter().zip(&shape) {
        let unknown: Vec<&String> = group.iter().filter(|n| !known.contains_key(*n)).collect();
        let product: usize = group.iter().filter_map(|n| known.get(n)).product();
        match unknown.len() {
            0 if product != dim => {
                return Err(fail(
                    e,
                    format!(
                        "axes ({}) give {product}, but the input has {dim}",
                        group.join(" ")
                    ),
                ));
            }
            0 => {}
            1 if product > 0 && dim % product == 0 => {
                known.insert(unknown[0].clone(), dim / product);
            }
            1 => {
                return Err(fail(
                    e,
                    format!(
                        "{dim} is not divisible by {product} for axes ({})",
                        group.join(" ")
                    ),
                ))
            }
            _ => {
                return Err(fail(
                    e,
                    format!("give the sizes of all but one of ({})", group.join(" ")),
                ))
            }
        }
        for n in group {
            if elems.iter().any(|(m, _)| m == n) {
                return Err(fail(e, format!("axis `{n}` appears twice on the left")));
            }
            elems.push((n.clone(), known[n]));
        }
    }
    let out_elems: Vec<String> = rhs.iter().flatten().cloned().collect();
    for (i, n) in out_elems.iter().enumerate() {
        if out_elems[..i].contains(n) {
            return Err(fail(e, format!("axis `{n}` appears twice on the right")));
        }
        if !elems.iter().any(|(m, _)| m == n) {
            if !broadcast {
                return Err(fail(
                    e,
                    format!("axis `{n}` is not on the left; use broadcast() to add axes"),
                ));
            }
            if !known.contains_key(n) {
                return Err(fail(e, format!("new axis `{n}` needs a size, e.g. {n}=8")));
            }
        }
    }
    if let Some((n, _)) = elems.iter().find(|(n, _)| !out_elems.contains(n)) {
        return Err(fail(
            e,
            format!("axis `{n}` is dropped; rearrange keeps every axis"),
        ));
    }
    let mut cur = x;
    let elem_shape: Vec<usize> = elems.iter().map(|(_, s)| *s).collect();
    if elem_shape != shape {
        cur = emit(
            e,
            "reshape",
            ints_attr("shape", elem_shape.iter().map(|&d| d as i64).collect()),
            cur,
            span,
        )?;
    }
    let kept: Vec<&String> = out_elems
        .iter()
        .filter(|n| elems.iter().any(|(m, _)| m == *n))
        .collect();
    let perm: Vec<i64> = kept
        .iter()
        .map(|n| {
            elems
                .iter()
                .position(|(m, _)| m == *n)
                .expect("kept axes are on the left") as i64
        })
        .collect();
    if perm.iter().enumerate().any(|(i, &p)| i as i64 != p) {
        cur = emit(e, "permute", ints_attr("dims", perm), cur, span)?;
    }
    if out_elems.len() > kept.len() {
        let with_ones: Vec<i64> = out_elems
            .iter()
            .map(|n| {
                if elems.iter().any(|(m, _)| m == n) {
                    known[n] as i64
                } else {
                    1
                }
            })
            .collect();
        cur = emit(e, "reshape", ints_attr("shape", with_ones), cur, span)?;
        let full: Vec<i64> = out_elems.iter().map(|n| known[n] as i64).collect();
        cur = emit(e, "expand", ints_attr("shape", full), cur, span)?;
    }
    let final_shape: Vec<i64> = rhs
        .iter()
        .map(|g| g.iter().map(|n| known[n] as i64).product())
        .collect();
    let cur_shape: Vec<i64> = e.shape_of(cur).iter().map(|&d| d as i64).collect();
    if final_shape != cur_shape {
        cur = emit(e, "reshape", ints_attr("shape", final_shape), cur, span)?;
    }
    if cur == x {
        let def = ops::lookup("identity").expect("identity op");
        return e.emit_op(def, Attrs::new(), &[x], span, hint);
    }
    e.name_value(cur, &hint);
    Ok(Value::Tensor(cur))
}
