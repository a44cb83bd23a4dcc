//! Code generators: each reads the Kernel IR ([`crate::kernel`]) and produces code for one
//! target. `cpu` JIT-compiles kernels with Cranelift for the host; `gpu` writes WGSL and
//! CUDA C and the launch plan that runs them.

pub mod cpu;
pub mod gpu;
pub mod prepare;

use crate::ir::{Graph, NodeKind, ValueId};
use std::collections::HashSet;

/// The nodes an executable computes per inference, in execution order: every op or group
/// that depends on a graph input (`dependent`, from
/// [`input_dependent`](crate::passes::input_dependent)). The rest is prepared once from the
/// weights.
pub fn per_inference_nodes(graph: &Graph, dependent: &HashSet<ValueId>) -> Vec<ValueId> {
    graph
        .topo_order()
        .into_iter()
        .filter(|id| {
            dependent.contains(id)
                && matches!(
                    graph.node(*id).kind,
                    NodeKind::Op { .. } | NodeKind::Fused { .. }
                )
        })
        .collect()
}
