bb 0.1;
# Python habit: `def` and a colon instead of `block` and braces.
def unit(x):
    return relu(x)

model net() {
    input x: f32[1, 3, 8, 8];
    output y = unit(x);
}
