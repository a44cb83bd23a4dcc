bb 0.1;
# `for` is a keyword and cannot name a constant.
let for = 1;

model net() {
    input x: f32[1, 3, 8, 8];
    output y = relu(x);
}
