bb 0.1;
# `matmul` takes two tensors: a number in the second operand's place is a wrong type (`x * 2.0`
# scales), not an argument too many.
model products() {
    input x: f32[1, 3, 4, 4];
    output y = matmul(x, 2.0);
}
