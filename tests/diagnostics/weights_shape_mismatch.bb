# bbc-test: model=net_k3
# bbc-test: checkpoint-from=net_k5
bb 0.1;
# The checkpoint was trained with 5x5 kernels; the spec builds 3x3.
model net(k: int = 3) {
    input x: f32[1, 3, 8, 8];
    stem = conv2d(x, out=8, k=k, pad=k // 2);
    output y = stem;
}

model net_k5 = net(k=5);
model net_k3 = net(k=3);
