//! The verifier: structural and shape invariants every Graph IR must hold, checked after
//! elaboration, after parsing the text form, and (later) after every pass.

use super::{Graph, NodeKind};
use crate::ops::{ArgType, Shape};
use std::collections::HashSet;

/// Checks `graph` and returns every violation found (empty = valid).
pub fn verify(graph: &Graph) -> Vec<String> {
    let mut errors = Vec::new();
    let order = graph.topo_order();
    if order.len() != graph.nodes.node_count() {
        errors.push("the graph has a cycle".to_string());
        return errors;
    }
    let mut names = HashSet::new();
    for id in order {
        let node = graph.node(id);
        if !names.insert(node.name.as_str()) {
            errors.push(format!("value `%{}` is defined twice", node.name));
        }
        let inputs = graph.inputs(id);
        match &node.kind {
            NodeKind::Input | NodeKind::Param { .. } | NodeKind::Const { .. } => {
                if !inputs.is_empty() {
                    errors.push(format!("`%{}` is a leaf but has operands", node.name));
                }
                if let NodeKind::Const { data } = &node.kind {
                    if data.len() != node.numel() {
                        errors.push(format!(
                            "`%{}`: a constant of shape {:?} holds {} elements",
                            node.name,
                            node.shape,
                            data.len()
                        ));
                    }
                }
            }
            NodeKind::Fused { kind, body } => {
                for e in verify(body) {
                    errors.push(format!("`%{}` (fused {kind}): {e}", node.name));
                }
                let body_inputs: Vec<_> = body
                    .inputs
                    .iter()
                    .map(|&i| body.node(i).shape.clone())
                    .collect();
                let operands: Vec<_> = inputs
                    .iter()
                    .map(|&i| graph.node(i).shape.clone())
                    .collect();
                if body_inputs != operands {
                    errors.push(format!("`%{}`: operands {operands:?} do not match the body's inputs {body_inputs:?}", node.name));
                }
                match body.outputs.as_slice() {
                    [o] if body.nodes.contains_node(o.value)
                        && body.node(o.value).shape == node.shape => {}
                    _ => errors.push(format!(
                        "`%{}`: a fusion body must have one output of shape {:?}",
                        node.name, node.shape
                    )),
                }
            }
            NodeKind::Op { op, attrs } => {
                for spec in op
                    .args
                    .iter()
                    .filter(|a| !matches!(a.ty, ArgType::Tensor | ArgType::Tensors))
                {
                    if !attrs.contains_key(spec.name) {
                        errors.push(format!(
                            "`%{}`: {} is missing attribute `{}`",
                            node.name, op.name, spec.name
                        ));
                    }
                }
                for key in attrs.keys() {
                    if op.arg(key).is_none() {
                        errors.push(format!(
                            "`%{}`: {} has no argument `{key}`",
                            node.name, op.name
                        ));
                    }
                }
                if errors
                    .iter()
                    .any(|e| e.starts_with(&format!("`%{}`", node.name)))
                {
                    continue;
                }
                let shapes: Vec<Shape> = inputs
                    .iter()
                    .map(|&i| graph.node(i).shape.clone())
                    .collect();
                let has_list = op.args.iter().any(|a| a.ty == ArgType::Tensors);
                let n_data = if has_list {
                    shapes.len()
                } else {
                    op.args.iter().filter(|a| a.ty == ArgType::Tensor).count()
                };
                if n_data > shapes.len() {
                    errors.push(format!(
                        "`%{}`: {} needs {n_data} tensor operands, has {}",
                        node.name,
                        op.name,
                        shapes.len()
                    ));
                    continue;
                }
                let (data, params) = shapes.split_at(n_data);
                let expected = (op.params)(attrs, data);
                if expected.len() != params.len()
                    || expected.iter().zip(params).any(|(p, s)| &p.shape != s)
                {
                    let want: Vec<String> = expected
                        .iter()
                        .map(|p| format!("{}{:?}", p.name, p.shape))
                        .collect();
                    errors.push(format!(
                        "`%{}`: {} expects parameters [{}], has shapes {:?}",
                        node.name,
                        op.name,
                        want.join(", "),
                        params
                    ));
                    continue;
                }
                match (op.shape)(attrs, data) {
                    Ok(shape) if shape == node.shape => {}
                    Ok(shape) => errors.push(format!(
                        "`%{}`: recorded shape {:?} but {} gives {:?}",
                        node.name, node.shape, op.name, shape
                    )),
                    Err(e) => errors.push(format!("`%{}`: {e}", node.name)),
                }
            }
        }
    }
    for o in &graph.outputs {
        if !graph.nodes.contains_node(o.value) {
            errors.push(format!("output `{}` refers to a removed value", o.name));
        }
    }
    errors
}
