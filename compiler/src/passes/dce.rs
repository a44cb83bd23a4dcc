//! `dce`: dead code elimination. Removes every value no output depends on, except graph
//! inputs, which are the model's interface even when unused.

use super::Pass;
use crate::ir::{Graph, NodeKind};
use petgraph::Direction;
use std::collections::HashSet;

pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn description(&self) -> &'static str {
        "remove values no output depends on"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut live: HashSet<_> = graph.outputs.iter().map(|o| o.value).collect();
        let mut stack: Vec<_> = live.iter().copied().collect();
        while let Some(n) = stack.pop() {
            for src in graph.nodes.neighbors_directed(n, Direction::Incoming) {
                if live.insert(src) {
                    stack.push(src);
                }
            }
        }
        let dead: Vec<_> = graph
            .nodes
            .node_indices()
            .filter(|n| !live.contains(n) && !matches!(graph.node(*n).kind, NodeKind::Input))
            .collect();
        for n in &dead {
            graph.nodes.remove_node(*n);
        }
        !dead.is_empty()
    }
}
