//! `cse`: common subexpression elimination. Two applications of the same op with the same
//! attributes to the same operands compute the same value; the later one is replaced by the
//! earlier. Parameters and inputs are never merged (two keys are two tensors).

use super::Pass;
use crate::ir::{Graph, NodeKind};
use std::collections::HashMap;

pub struct Cse;

impl Pass for Cse {
    fn name(&self) -> &'static str {
        "cse"
    }

    fn description(&self) -> &'static str {
        "merge identical op applications"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut seen: HashMap<(String, Vec<usize>), _> = HashMap::new();
        let mut changed = false;
        for id in graph.topo_order() {
            let NodeKind::Op { op, attrs } = &graph.node(id).kind else {
                continue;
            };
            // Attributes print canonically (sorted keys), so their text is a faithful key.
            let attrs_text: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let key = (
                format!("{}{{{}}}", op.name, attrs_text.join(",")),
                graph.inputs(id).iter().map(|i| i.index()).collect(),
            );
            match seen.get(&key) {
                Some(&first) => {
                    graph.replace_uses(id, first);
                    graph.nodes.remove_node(id);
                    changed = true;
                }
                None => {
                    seen.insert(key, id);
                }
            }
        }
        changed
    }
}
