bb 0.1;
# The mistake is in an imported helper file; the location must name that file.
import "aux/broken.bb";

model net() {
    input x: f32[1, 3, 8, 8];
    output y = unit(x);
}
