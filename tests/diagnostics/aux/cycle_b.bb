bb 0.1;
# Helper for resolve_import_cycle: closes the cycle.
import "cycle_a.bb";

block b(x: tensor) -> tensor {
    return gelu(x);
}
