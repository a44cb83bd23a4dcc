bb 0.1;
# Watters et al. 2019 (arXiv 1901.07017): tile z over a grid, append fixed x/y coordinate channels
# in [-1, 1], then stride-1 convs. Unpadded 3x3 convs are common in implementations, so the
# broadcast grid is enlarged by 2 pixels per conv to land exactly on H x W.

model spatial_broadcast_decoder(latent: int = 10, H: int = 64, W: int = 64,
                                hidden: int = 64, n_conv: int = 4, out_ch: int = 3) {
    input z: f32[B, latent];
    let (Hb, Wb) = (H + 2 * n_conv, W + 2 * n_conv);
    tiled = broadcast(z, "b k -> b k h w", h=Hb, w=Wb);           # [B, latent, Hb, Wb]
    const coords: f32[2, Hb, Wb] = coord_grid(Hb, Wb, lo=-1.0, hi=1.0);   # not in the state_dict
    inp = concat([tiled, broadcast(coords, "c h w -> b c h w", b=B)], axis=1);
    dec = inp |> seq {
        for i in 0..n_conv { conv2d(out=hidden, k=3, pad=0); relu(); }
        conv2d(out=out_ch, k=1);
    };
    assert shape(dec) == [B, out_ch, H, W];
    output x_hat = dec;
}
