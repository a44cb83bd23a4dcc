bb 0.1;
# Two helper files import each other.
import "aux/cycle_a.bb";

model net() {
    input x: f32[1, 3, 8, 8];
    output y = a(x);
}
