bb 0.1;
# A checkpoint-key rename rule with an unbalanced group.
model net() {
    rename "^stages\.(\d+" => "s.$1";
    input x: f32[1, 3, 8, 8];
    output y = conv2d(x, out=8, k=3, pad=1);
}
