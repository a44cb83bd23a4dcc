#!/usr/bin/env python3
"""Reference values of the Universal Image Quality Index for bbc's `uiqi` op.

Definition (Wang & Bovik, "A Universal Image Quality Index", IEEE Signal Processing Letters
9(3):81-84, 2002). For two windows x, y of N pixels

    Q = 4 * s_xy * mx * my / ((s_x^2 + s_y^2) * (mx^2 + my^2))

(means mx, my; variances and covariance with the same normalisation, which cancels). The
index of an image pair is the mean of Q over every k x k window moved pixel by pixel (stride
1, valid positions only: M = (H-k+1)(W-k+1) windows; k = 8 in the paper).

The authors' MATLAB code (img_qi.m) evaluates it from window *sums* S_x, S_y, S_xx, S_yy,
S_xy, and that sum form, with its guards, is what this script implements:

    num  = 4 (N S_xy - S_x S_y) S_x S_y
    den1 = N (S_xx + S_yy) - S_x^2 - S_y^2
    den  = den1 (S_x^2 + S_y^2)
    Q    = num / den                     where den != 0
         = 2 S_x S_y / (S_x^2 + S_y^2)   where den1 == 0 and S_x^2 + S_y^2 != 0
                                         (both windows flat: only the luminance term)
         = 1                             elsewhere (both window sums 0 -- including the
                                         quirk that two non-flat zero-mean windows score 1)

bbc's choices on top of the grey-scale paper: images are [B, C, H, W]; every channel plane is
scored on its own and the index of image b is the mean over its C channels and M windows
together, one number per image (output [B]).

Why no library is the reference:

* ``sewar.full_ref.uqi`` ports the MATLAB sum form but feeds it window *means*
  (``scipy.ndimage.uniform_filter``) where the formula needs *sums*, so N*S_xy - S_x*S_y
  and den1 mix scales and the value changes (the research note measured 0.96773 against the
  correct 0.94517 on a random 8x8 pair; they agree only in special cases such as x == y).
  It also computes a "same"-size map and crops a border of round(ws/2), which is not the
  valid-window set, and averages channels differently.
* ``torchmetrics`` ``UniversalImageQualityIndex`` defaults to an SSIM-style 11x11 Gaussian
  window (sigma 1.5) with reflection padding: a different index.
* ``skimage`` has SSIM, not UIQI (SSIM with C1 = C2 = 0 is close but its guards and window
  normalisation differ).

So the values here are computed from the definition alone, in **exact rational arithmetic**
(``fractions.Fraction`` of the float32 inputs): the window sums are exact and the guards
fire exactly where the MATLAB code would fire on exact data. The only rounding is the final
conversion of the mean to float. A plain float64 NumPy version of the same sum form
(``uiqi_float64``) is kept as a cross-check; it agrees to ~1e-15 on these fixtures. Floating
sum forms are fragile on flat windows, though: accumulated one by one, S_xx of 64 copies of
float32 0.1 leaves N*S_xx - S_x^2 = -4.3e-14 instead of 0, so den1 != 0 and the guard
misfires, giving num/den = residue/residue (NumPy's pairwise sums happen to be exact for the
flat windows here). That is why bbc evaluates N*S_xy - S_x*S_y and den1 in the equivalent
centred (two-pass) form N*sum((x-mx)(y-my)), which is exactly 0 on a flat window.

Fixtures (committed; regenerate from the repo root with
``/opt/refenv/bin/python tools/reference/uiqi.py``):

    tests/fixtures/uiqi/<case>_a.npy, <case>_b.npy   float32 [B, C, H, W] image pairs
    tests/fixtures/uiqi/<case>_q.npy                 float32 [B] reference index
    tests/fixtures/uiqi/cases.json                   {case: {"window": k, "note": ...}}
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path("tests/fixtures/uiqi")
SEED = 20240601 + 1111


def window_index_exact(x: list[Fraction], y: list[Fraction]) -> Fraction:
    """One window's Q from the MATLAB sum form, exactly."""
    n = len(x)
    sx, sy = sum(x), sum(y)
    sxx = sum(v * v for v in x)
    syy = sum(v * v for v in y)
    sxy = sum(u * v for u, v in zip(x, y))
    prod = sx * sy
    sq = sx * sx + sy * sy
    num = 4 * (n * sxy - prod) * prod
    den1 = n * (sxx + syy) - sq
    den = den1 * sq
    if den != 0:
        return num / den
    if den1 == 0 and sq != 0:
        return 2 * prod / sq
    return Fraction(1)


def uiqi_exact(a: np.ndarray, b: np.ndarray, window: int = 8) -> np.ndarray:
    """[B, C, H, W] pair -> [B] float64: mean over channels and valid windows, exactly."""
    assert a.shape == b.shape and a.ndim == 4, (a.shape, b.shape)
    B, C, H, W = a.shape
    k = window
    assert 1 <= k <= min(H, W)
    out = np.empty(B, dtype=np.float64)
    for i in range(B):
        total = Fraction(0)
        for c in range(C):
            fa = [[Fraction(float(v)) for v in row] for row in a[i, c]]
            fb = [[Fraction(float(v)) for v in row] for row in b[i, c]]
            for r in range(H - k + 1):
                for s in range(W - k + 1):
                    x = [fa[r + u][s + v] for u in range(k) for v in range(k)]
                    y = [fb[r + u][s + v] for u in range(k) for v in range(k)]
                    total += window_index_exact(x, y)
        out[i] = float(total / (C * (H - k + 1) * (W - k + 1)))
    return out


def uiqi_float64(a: np.ndarray, b: np.ndarray, window: int = 8) -> np.ndarray:
    """The same sum form vectorised in float64 (MATLAB's arithmetic): a cross-check only."""
    from numpy.lib.stride_tricks import sliding_window_view as windows

    k, n = window, window * window
    x, y = a.astype(np.float64), b.astype(np.float64)

    def box(t: np.ndarray) -> np.ndarray:
        return windows(t, (k, k), axis=(2, 3)).sum(axis=(-2, -1))

    sx, sy, sxx, syy, sxy = box(x), box(y), box(x * x), box(y * y), box(x * y)
    prod, sq = sx * sy, sx * sx + sy * sy
    num = 4 * (n * sxy - prod) * prod
    den1 = n * (sxx + syy) - sq
    den = den1 * sq
    q = np.ones_like(den)
    flat = (den1 == 0) & (sq != 0)
    q[flat] = 2 * prod[flat] / sq[flat]
    ok = den != 0
    q[ok] = num[ok] / den[ok]
    return q.mean(axis=(1, 2, 3))


def on_grid(t: np.ndarray) -> np.ndarray:
    """Round to the 8-bit grid v/255 (what a PNG holds), as float32."""
    return (np.round(np.clip(t, 0, 1) * 255) / 255).astype(np.float32)


def make_cases(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray, int, str]]:
    f32 = np.float32
    cases: dict[str, tuple[np.ndarray, np.ndarray, int, str]] = {}

    x = rng.random((1, 1, 16, 16)).astype(f32)
    y = (0.75 * x + 0.1 * rng.standard_normal(x.shape)).astype(f32)
    cases["noisy16"] = (x, y, 8, "16x16 grey, y = 0.75 x + noise: 81 windows")

    cases["identical"] = (x, x.copy(), 8, "y = x: exactly 1")

    # Colour batch on the 8-bit grid, with flat regions: both flat (different and equal
    # levels, including full-mantissa float32 levels such as 100/255), one flat, both zero.
    a = on_grid(rng.random((2, 3, 16, 16)))
    b = on_grid(0.8 * a + 0.15 * rng.random(a.shape))
    a[0, 0, :9, :9] = f32(100 / 255)
    b[0, 0, :9, :9] = f32(37 / 255)  # both flat, different levels: luminance term only
    a[0, 1, 4:14, 4:14] = f32(200 / 255)
    b[0, 1, 4:14, 4:14] = f32(200 / 255)  # both flat, same level: 1
    a[0, 2, 6:, 6:] = 0.0
    b[0, 2, 6:, 6:] = 0.0  # both zero: 1 by the last guard
    a[1, 0, :, :10] = f32(0.5)  # a flat, b textured: no correlation, 0
    b[1, 1, 3:13, :] = 0.0  # b zero, a textured: den != 0, num = 0
    cases["flat_regions"] = (a, b, 8, "2x3x16x16 on the 8-bit grid with flat/zero regions")

    # Zero-mean windows (checkerboards): both window sums 0, not flat -> the MATLAB code's 1.
    yy, xx = np.mgrid[0:10, 0:10]
    cb = np.where((yy + xx) % 2 == 0, 1.0, -1.0).astype(f32)[None, None]
    other = (cb * np.linspace(0.5, 1.5, 10, dtype=f32)[None, None, :, None]).astype(f32)
    cases["zero_mean"] = (cb, other, 2, "checkerboards, window 2: every window sums to 0")

    # A rectangular multi-channel pair with another window size, signed values.
    p = rng.standard_normal((1, 2, 12, 10)).astype(f32)
    q = (np.roll(p, 1, axis=3) * 0.5 + 0.3 * rng.standard_normal(p.shape) + 0.2).astype(f32)
    cases["window5"] = (p, q, 5, "1x2x12x10 signed values, window 5")

    # Mirror about the window mean: correlation -1 with equal means and contrasts -> -1.
    r = (rng.random((1, 1, 8, 8)) + 0.5).astype(f32)
    m = np.float32(2 * float(r.astype(np.float64).mean()))
    cases["mirror"] = (r, (m - r).astype(f32), 8, "one 8x8 window, y = 2 mean(x) - x: about -1")
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {}
    for name, (a, b, k, note) in make_cases(rng).items():
        assert a.dtype == np.float32 and b.dtype == np.float32
        exact = uiqi_exact(a, b, k)
        approx = uiqi_float64(a, b, k)
        assert np.all(np.abs(exact) <= 1.0), exact
        assert np.allclose(uiqi_exact(b, a, k), exact, rtol=0, atol=1e-15), "not symmetric"
        np.save(args.out / f"{name}_a.npy", a)
        np.save(args.out / f"{name}_b.npy", b)
        np.save(args.out / f"{name}_q.npy", exact.astype(np.float32))
        meta[name] = {"window": k, "note": note}
        print(f"{name:14s} {list(a.shape)} window {k}: Q = {np.array2string(exact, precision=6)}"
              f"  |float64 sum form - exact| = {np.abs(approx - exact).max():.1e}")
    (args.out / "cases.json").write_text(json.dumps(meta, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
