block rdb(x: tensor[B, G0, H, W], G: int, n: int) -> tensor[B, G0, H, W] {
    feats = [x];
    for i in 0..n {
        y = relu(conv2d(concat(feats, axis=1), out=G, k=3, pad=1) @"convs.{i}");
        feats = feats ++ [y];
    }
    lff = conv2d(concat(feats, axis=1), out=G0, k=1);    # local feature fusion
    return x + lff;                                       # local residual
}
