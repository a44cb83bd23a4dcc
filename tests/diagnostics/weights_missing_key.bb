# bbc-test: model=net_with_head
# bbc-test: checkpoint-from=net
bb 0.1;
# A checkpoint saved before the classifier head was added to the spec.
model net(head: bool = false) {
    input x: f32[1, 3, 8, 8];
    stem = conv2d(x, out=8, k=3, pad=1);
    if head {
        pooled = flatten(mean(stem, axes=[2, 3], keepdim=true), start=1);
        fc = linear(pooled, out=10);
        output y = fc;
    } else {
        output y = stem;
    }
}

model net_with_head = net(head=true);
