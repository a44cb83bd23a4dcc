//! Weight preparation shared by every backend: the values of an optimised graph that are
//! computed from parameters alone (BatchNorm folded into conv weights, reshaped layer
//! scales, wavelet-folded filters, weight slices) and that per-inference kernels read. They
//! are evaluated once, when the weights are bound, never per inference.

use crate::interp::{self, InterpError};
use crate::ir::{Graph, Output, ValueId};
use bbc_runtime::Tensor;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// The values computed from parameters alone that per-inference steps (or the outputs)
/// read, evaluated by the interpreter on the parameter-only part of the graph, as row-major
/// data.
pub fn prepare(
    graph: &Graph,
    dependent: &HashSet<ValueId>,
    weights: &BTreeMap<String, Tensor>,
) -> Result<HashMap<ValueId, Vec<f32>>, InterpError> {
    let mut needed: BTreeSet<ValueId> = graph
        .outputs
        .iter()
        .map(|o| o.value)
        .filter(|v| !dependent.contains(v))
        .collect();
    for &id in dependent {
        needed.extend(
            graph
                .inputs(id)
                .into_iter()
                .filter(|v| !dependent.contains(v)),
        );
    }
    if needed.is_empty() {
        return Ok(HashMap::new());
    }
    let mut fixed = graph.clone();
    fixed.nodes.retain_nodes(|_, n| !dependent.contains(&n));
    fixed.inputs.clear();
    fixed.outputs = needed
        .iter()
        .map(|&value| Output {
            name: graph.node(value).name.clone(),
            value,
        })
        .collect();
    let mut values = interp::run(&fixed, &HashMap::new(), weights)?;
    Ok(needed
        .into_iter()
        .map(|id| {
            let t = values
                .remove(&graph.node(id).name)
                .expect("every needed value is an output");
            let data = match t.as_slice() {
                Some(s) => s.to_vec(),
                None => t.iter().copied().collect(),
            };
            (id, data)
        })
        .collect())
}
