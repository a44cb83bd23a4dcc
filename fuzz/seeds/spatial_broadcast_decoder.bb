bb 0.1;
# Spatial Broadcast Decoder — Watters, Matthey, Burgess, Lerchner 2019, arXiv 1901.07017.
# Tile the latent z over a grid, append fixed x/y coordinate channels in [-1, 1] (x varies
# along W, channel order [z, x, y] as in the paper), then stride-1 convolutions. The 3x3
# convolutions are unpadded, so the grid is enlarged by 2 pixels per conv and the output
# lands exactly on H x W.
#
# Key-compatible with the torch module in tools/reference/make_fixtures.py
# (dec = Sequential(Conv2d, ReLU, ..., Conv2d 1x1): dec.0, dec.2, dec.4, dec.6, dec.8).

model spatial_broadcast_decoder(latent: int = 10, H: int = 64, W: int = 64, hidden: int = 64,
                                n_conv: int = 4, out_ch: int = 3) {
    input z: f32[B=1, latent];
    let (Hb, Wb) = (H + 2 * n_conv, W + 2 * n_conv);
    tiled = broadcast(z, "b k -> b k h w", h=Hb, w=Wb);
    const coords: f32[2, Hb, Wb] = coord_grid(Hb, Wb, lo=-1.0, hi=1.0);   # not in the state_dict
    grid = broadcast(coords, "c h w -> b c h w", b=B);
    inp = concat([tiled, grid], axis=1);
    dec = inp |> seq {
        for i in 0..n_conv { conv2d(out=hidden, k=3, pad=0); relu(); }
        conv2d(out=out_ch, k=1);
    };
    assert shape(dec) == [B, out_ch, H, W], "the decoder must end at H x W";
    output x_hat = dec;
}

# A tiny configuration for tests: 2,219 parameters.
model sbd_test = spatial_broadcast_decoder(latent=4, H=8, W=8, hidden=8);
# The paper's VAE decoder widths (k = 10 latents, 4 x 64-channel 3x3 convs): 117,955 parameters.
model sbd_watters = spatial_broadcast_decoder(latent=10, H=64, W=64, hidden=64);
