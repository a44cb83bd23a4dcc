bb 0.1;
# The conv is nested inside relu(...) + x, so it is not the outermost call of the binding
# and gets no name for its weights.
model net() {
    input x: f32[1, 8, 8, 8];
    h = relu(conv2d(x, out=8, k=3, pad=1)) + x;
    output y = h;
}
