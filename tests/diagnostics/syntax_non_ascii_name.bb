bb 0.1;
# A name with a letter outside ASCII.
model net() {
    input x: f32[1, 3, 8, 8];
    ý = relu(x);
    output y = ý;
}
