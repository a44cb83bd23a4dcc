bb 0.1;
# A typo in an item keyword: `modle` for `model`.
block unit(x: tensor) -> tensor {
    return relu(x);
}

modle net() {
    input x: f32[1, 3, 8, 8];
    output y = unit(x);
}
