bb 0.1;
# The imported file does not exist (typo in the file name).
import "aux/layres.bb";

model net() {
    input x: f32[1, 3, 8, 8];
    output y = relu(x);
}
