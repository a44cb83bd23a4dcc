//! `remove-identities`: inference-mode removal of ops that compute their input unchanged:
//! `dropout`, `drop_path` (training-only regularisers) and `identity`.

use super::Pass;
use crate::ir::Graph;

pub struct RemoveIdentities;

impl Pass for RemoveIdentities {
    fn name(&self) -> &'static str {
        "remove-identities"
    }

    fn description(&self) -> &'static str {
        "drop dropout, drop_path and identity (no-ops at inference)"
    }

    fn run(&self, graph: &mut Graph) -> bool {
        let mut changed = false;
        for id in graph.topo_order() {
            let is_identity = graph
                .node(id)
                .op()
                .is_some_and(|op| matches!(op.name, "dropout" | "drop_path" | "identity"));
            if is_identity {
                let input = graph.inputs(id)[0];
                graph.replace_uses(id, input);
                graph.nodes.remove_node(id);
                changed = true;
            }
        }
        changed
    }
}
