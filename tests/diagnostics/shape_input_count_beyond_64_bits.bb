# bbc-test: dim=B=1099511627776
# bbc-test: dim=H=1099511627776
# bbc-test: dim=W=1099511627776
bb 0.1;
# An input whose element count (3 x 2^120) overflows 64 bits: the message states the count
# itself, not a saturated one.
model net {
    input x: f32[B=1, 3, H=8, W=8];
    output y = relu(x);
}
