bb 0.1;
# `pow` takes two tensors: a number in the exponent's place is a wrong type (`x ** 2.0`
# is how a number exponent is written), not an argument too many.
model squares() {
    input x: f32[1, 3, 4, 4];
    output y = pow(x, 2.0);
}
