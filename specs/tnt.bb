bb 0.1;
# TNT — Han, Xiao, Wu, Guo, Xu, Wang, "Transformer in Transformer", NeurIPS 2021,
# arXiv 2103.00112.
#
# Key-compatible with timm's `TNT` (timm/models/tnt.py) in its default, NON-legacy form:
# the 7x7/s4 pixel-embedding conv runs on each patch on its own (zero padding at patch
# borders), and the inner->outer projection is LN(16*c) -> Linear(no bias) -> LN(D).
# timm's `tnt_s_legacy_patch16_224` (the official huawei-noah code: conv over the whole
# image, then unfold; per-token LN and a biased Linear without the second LN) is not
# expressed here. Checkpoints of tnt_s_patch16_224 (363 keys, 23,768,584 parameters) and
# tnt_b_patch16_224 (363 keys, 65,428,680 parameters) load strictly.
#
# Shapes follow timm: image x [B, 3, H, W] is cut into N = (H/P)*(W/P) patches ("visual
# sentences"); each patch becomes M = ceil(P/4)^2 inner tokens ("visual words") of width c,
# kept as [B*N, M, c]; the outer tokens are [B, N+1, D] with a class token in front.

# Multi-head self-attention as in timm's TNT `Attention`: q and k come from one projection
# (`qk`, q first, then k, each split into heads as (h d)), v from a separate one (`v`);
# scale head_dim^-0.5, softmax over the keys, output projection `proj` (with bias).
block attention(x: tensor[B, N, C], heads: int, qkv_bias: bool) -> tensor[B, N, C] {
    assert C % heads == 0, "dim {C} is not divisible by {heads} heads";
    qk = linear(x, out=2 * C, bias=qkv_bias);
    v = linear(x, out=C, bias=qkv_bias);
    (q_, k_) = chunk(qk, 2, axis=-1);
    q_h = rearrange(q_, "b n (h d) -> b h n d", h=heads);
    k_t = rearrange(k_, "b n (h d) -> b h d n", h=heads);
    v_h = rearrange(v, "b n (h d) -> b h n d", h=heads);
    attn = softmax(matmul(q_h, k_t) * (C // heads) ** -0.5, axis=-1);
    o = rearrange(matmul(attn, v_h), "b h n d -> b n (h d)");
    proj = linear(o, out=C);
    return proj;
}

# timm `Mlp`: fc1 -> GELU (exact erf) -> fc2; dropouts are identities at inference.
block mlp_block(x: tensor[B, N, C], hidden: int) -> tensor[B, N, C] {
    fc1 = linear(x, out=hidden);
    fc2 = linear(gelu(fc1), out=C);
    return fc2;
}

# One TNT block (timm `Block`): an inner transformer over the words of each patch, the
# words of each patch projected into that patch's outer token, then an outer transformer
# over the patch tokens. Returns both streams: (pixel tokens, patch tokens).
block tnt_block(pixel: tensor[BN, M, c], patch: tensor[B, N1, D], heads_in: int,
                heads_out: int, mlp_ratio: float, qkv_bias: bool) {
    # Inner transformer. Its MLP is always 4x wide: timm hard-codes int(dim * 4) there and
    # applies `mlp_ratio` only to the outer MLP.
    norm_in = layer_norm(pixel);
    attn_in = attention(norm_in, heads_in, qkv_bias);
    p = pixel + attn_in;
    norm_mlp_in = layer_norm(p);
    mlp_in = mlp_block(norm_mlp_in, 4 * c);
    p = p + mlp_in;

    # Inner -> outer: flatten each patch's M words (word-major, channel-minor, as timm's
    # reshape of [B*N, M, c] to [B, N, M*c]) and add the projection to patch tokens 1..N.
    # The class token (index 0) has no words and passes through untouched.
    norm1_proj = layer_norm(rearrange(p, "(b n) m c -> b n (m c)", b=B));
    proj = linear(norm1_proj, out=D, bias=false);
    norm2_proj = layer_norm(proj);
    (cls, tokens) = split(patch, [1, N1 - 1], axis=1);
    o = concat([cls, tokens + norm2_proj], axis=1);

    # Outer transformer over the class token and the N patch tokens.
    norm_out = layer_norm(o);
    attn_out = attention(norm_out, heads_out, qkv_bias);
    o = o + attn_out;
    norm_mlp = layer_norm(o);
    mlp = mlp_block(norm_mlp, int(D * mlp_ratio));
    o = o + mlp;
    return (p, o);
}

# Defaults are those of timm's `TNT` class; the registered models below override them like
# timm's `model_cfg`. LayerNorm eps is torch's 1e-5 throughout.
model tnt(img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
          num_classes: int = 1000, embed_dim: int = 768, inner_dim: int = 48,
          depth: int = 12, num_heads_inner: int = 4, num_heads_outer: int = 12,
          mlp_ratio: float = 4.0, qkv_bias: bool = false, first_stride: int = 4) {
    input x: f32[B=1, in_chans, H=img_size, W=img_size];
    assert H % patch_size == 0 && W % patch_size == 0,
        "image {H}x{W} is not a whole number of {patch_size}x{patch_size} patches";
    let (gh, gw) = (H // patch_size, W // patch_size);
    let num_patches = gh * gw;
    # The conv (k 7, s first_stride, pad 3) turns a PxP patch into ps x ps words.
    let ps = ceil(patch_size / first_stride);

    param cls_token: f32[1, 1, embed_dim] = trunc_normal(0.02);
    param patch_pos: f32[1, num_patches + 1, embed_dim] = trunc_normal(0.02);
    param pixel_pos: f32[1, inner_dim, ps, ps] = trunc_normal(0.02);

    # Pixel embedding (timm `PixelEmbed`, non-legacy): unfold the image into patches
    # [B*N, C, P, P] (patches row-major over the grid, as nn.Unfold), convolve each patch
    # independently, add the word position embedding, and make the ps*ps positions the
    # words of the patch (row-major), channels last.
    scope "pixel_embed" {
        patches = rearrange(x, "b c (gh p1) (gw p2) -> (b gh gw) c p1 p2",
                            p1=patch_size, p2=patch_size);
        proj = conv2d(patches, out=inner_dim, k=7, s=first_stride, pad=3);
    }
    pixel = rearrange(proj + pixel_pos, "bn c h w -> bn (h w) c");

    # Patch embedding from the words: LN -> Linear (with bias, unlike the blocks' proj) -> LN,
    # then prepend the class token and add the patch position embedding.
    norm1_proj = layer_norm(rearrange(pixel, "(b n) m c -> b n (m c)", b=B));
    proj = linear(norm1_proj, out=embed_dim);
    norm2_proj = layer_norm(proj);
    patch = concat([expand(cls_token, [B, -1, -1]), norm2_proj], axis=1) + patch_pos;

    for i in 0..depth as "blocks.{i}" {
        (pixel, patch) = tnt_block(pixel, patch, num_heads_inner, num_heads_outer,
                                   mlp_ratio, qkv_bias) @_;
    }

    # Head (global_pool="token"): final LN, take the class token, classify.
    norm = layer_norm(patch);
    cls_out = reshape(slice(norm, axis=1, start=0, end=1), [B, embed_dim]);
    head = linear(cls_out, out=num_classes);
    output logits = head;
}

# Tiny configuration for tests: 32x32 image, 16 patches of 8x8, 2x2 words of width 8 each;
# 32,586 parameters (research note A4).
model tnt_test = tnt(img_size=32, patch_size=8, embed_dim=32, inner_dim=8, depth=2,
                     num_heads_inner=2, num_heads_outer=2, num_classes=10);

# The timm family (model_cfg of tnt_s_patch16_224 / tnt_b_patch16_224; qkv_bias=False).
model tnt_s_patch16_224 = tnt(patch_size=16, embed_dim=384, inner_dim=24, depth=12,
                              num_heads_outer=6);
model tnt_b_patch16_224 = tnt(patch_size=16, embed_dim=640, inner_dim=40, depth=12,
                              num_heads_outer=10);
