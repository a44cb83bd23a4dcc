bb 0.1;
# `16 / 2` is a float (`/` always gives one), so the shape's first element is not an int:
# the message names the element and its type, not just the list.
model halves() {
    input x: f32[1, 16];
    output y = reshape(x, [16 / 2, 2]);
}
