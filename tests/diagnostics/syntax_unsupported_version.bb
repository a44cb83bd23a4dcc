bb 0.2;
# A spec written for a newer language version than this bbc understands.
model net() {
    input x: f32[1, 3, 8, 8];
    output y = relu(x);
}
