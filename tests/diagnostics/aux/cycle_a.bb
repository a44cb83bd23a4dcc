bb 0.1;
# Helper for resolve_import_cycle: imports cycle_b, which imports this file back.
import "cycle_b.bb";

block a(x: tensor) -> tensor {
    return relu(x);
}
