//! The reference interpreter: runs a Graph IR node by node with the op table's reference
//! implementations. It is deliberately simple; every optimisation and backend is checked
//! against it.

use crate::ir::{Graph, NodeKind, ValueId};
use bbc_runtime::Tensor;
use std::collections::{BTreeMap, HashMap};

/// Why a graph could not be run with the given inputs and weights.
#[derive(Debug, Clone, PartialEq)]
pub enum InterpError {
    MissingInput(String),
    InputShape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    MissingWeight(String),
    WeightShape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
}

impl std::fmt::Display for InterpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InterpError::MissingInput(n) => write!(f, "no value given for input `{n}`"),
            InterpError::InputShape {
                name,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "input `{name}` has shape {actual:?}, the model expects {expected:?}"
                )
            }
            InterpError::MissingWeight(n) => write!(f, "no value for parameter `{n}`"),
            InterpError::WeightShape {
                name,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "parameter `{name}` has shape {actual:?}, the model expects {expected:?}"
                )
            }
        }
    }
}

impl std::error::Error for InterpError {}

/// Runs `graph` and returns its outputs by name.
pub fn run(
    graph: &Graph,
    inputs: &HashMap<String, Tensor>,
    weights: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, InterpError> {
    let order = graph.topo_order();
    // Free each intermediate after its last use, so peak memory stays near the live set.
    let mut remaining: HashMap<ValueId, usize> = HashMap::new();
    for &id in &order {
        for input in graph.inputs(id) {
            *remaining.entry(input).or_insert(0) += 1;
        }
    }
    for o in &graph.outputs {
        *remaining.entry(o.value).or_insert(0) += 1;
    }
    let mut values: HashMap<ValueId, Tensor> = HashMap::new();
    for id in order {
        let node = graph.node(id);
        let operands = graph.inputs(id);
        let value = match &node.kind {
            NodeKind::Input => {
                let t = inputs
                    .get(&node.name)
                    .ok_or_else(|| InterpError::MissingInput(node.name.clone()))?;
                if t.shape() != node.shape.as_slice() {
                    return Err(InterpError::InputShape {
                        name: node.name.clone(),
                        expected: node.shape.clone(),
                        actual: t.shape().to_vec(),
                    });
                }
                t.clone()
            }
            NodeKind::Param { .. } => {
                let t = weights
                    .get(&node.name)
                    .ok_or_else(|| InterpError::MissingWeight(node.name.clone()))?;
                if t.shape() != node.shape.as_slice() {
                    return Err(InterpError::WeightShape {
                        name: node.name.clone(),
                        expected: node.shape.clone(),
                        actual: t.shape().to_vec(),
                    });
                }
                t.clone()
            }
            NodeKind::Const { data } => Tensor::from_shape_vec(node.shape.as_slice(), data.clone())
                .expect("the verifier checks a constant's length against its shape"),
            NodeKind::Fused { body, .. } => {
                let args: HashMap<String, Tensor> = body
                    .inputs
                    .iter()
                    .zip(&operands)
                    .map(|(&b, o)| (body.node(b).name.clone(), values[o].clone()))
                    .collect();
                let mut out = run(body, &args, &BTreeMap::new())?;
                let name = &body.outputs[0].name;
                out.remove(name).expect("a fusion body has one output")
            }
            NodeKind::Op { op, attrs } => {
                let args: Vec<&Tensor> = operands.iter().map(|i| &values[i]).collect();
                (op.eval)(attrs, &args)
            }
        };
        values.insert(id, value);
        for input in operands {
            let count = remaining
                .get_mut(&input)
                .expect("every operand was counted");
            *count -= 1;
            if *count == 0 {
                values.remove(&input);
            }
        }
    }
    Ok(graph
        .outputs
        .iter()
        .map(|o| (o.name.clone(), values[&o.value].clone()))
        .collect())
}
