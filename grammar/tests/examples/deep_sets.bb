bb 0.1;
# Zaheer et al. 2017 (arXiv 1703.06114). Keys mirror `self.phi = nn.Sequential(...)`.

block mlp_stack(x: tensor, widths: [int], act_last: bool = false) -> tensor {
    return x |> seq {
        for (i, w) in enumerate(widths) {
            linear(out=w);                               # acts on the last axis only
            if act_last || i + 1 < len(widths) { relu(); }
        }
    } @_;                                                 # block call site supplies the segment
}

model deep_sets(d_in: int = 3, phi_widths: [int] = [256, 256, 128],
                rho_widths: [int] = [128, 64, 1], masked: bool = false) {
    input x: f32[B, N, d_in];                             # N = set size, symbolic
    phi = mlp_stack(x, phi_widths, act_last=true);        # phi.0, phi.2, phi.4 -> [B, N, 128]
    if masked {
        input mask: f32[B, N];                            # 1 = element present
        pooled = sum(phi * reshape(mask, [B, N, 1]), axis=1);
    } else {
        pooled = sum(phi, axis=1);                        # permutation-invariant pooling -> [B, 128]
    }
    rho = mlp_stack(pooled, rho_widths);                  # rho.0, rho.2, rho.4 -> [B, 1]
    output y = rho;
}
