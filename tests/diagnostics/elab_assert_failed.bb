bb 0.1;
# A family member that violates the family's own assertion.
model net(depths: [int] = [2, 2, 6, 2]) {
    assert len(depths) == 4, "expected four stage depths, got {len(depths)}";
    input x: f32[1, 3, 8, 8];
    output y = conv2d(x, out=8, k=3, pad=1);
}

model net_small = net(depths=[1, 1, 1]);
