bb 0.1;
# Deep Sets — Zaheer, Kottur, Ravanbakhsh, Poczos, Salakhutdinov, Smola, NeurIPS 2017,
# arXiv 1703.06114. The invariant model f(X) = rho(pool_{x in X} phi(x)) (Theorem 2), with
# sum or mean pooling over the set axis, and a masked variant for padded sets of varying size.
#
# Key-compatible with the torch module in tools/reference/make_fixtures.py:
# phi = Sequential(Linear, ReLU, Linear), rho = Linear (phi.0, phi.2, rho).

model deep_sets(d_in: int = 3, hidden: int = 8, d_out: int = 1, pool: str = "sum",
                masked: bool = false) {
    assert pool == "sum" || pool == "mean", "pool must be \"sum\" or \"mean\", not \"{pool}\"";
    input x: f32[B=2, N=5, d_in];
    # phi runs on every element independently: linear acts on the last axis.
    phi = x |> seq { linear(out=hidden); relu(); linear(out=hidden); };
    if masked {
        # mask[b, n] is 1 for real elements and 0 for padding.
        input mask: f32[B, N];
        m = reshape(mask, [B, N, 1]);
        total = sum(phi * m, axes=[1]);
        count = clamp(sum(m, axes=[1]), min=1.0);
        pooled = if pool == "sum" { total } else { total / count };
    } else {
        pooled = if pool == "sum" { sum(phi, axes=[1]) } else { mean(phi, axes=[1]) };
    }
    rho = linear(pooled, out=d_out);
    output y = rho;
}

model deep_sets_sum = deep_sets(pool="sum");
model deep_sets_mean = deep_sets(pool="mean");
model deep_sets_masked = deep_sets(pool="mean", masked=true);
