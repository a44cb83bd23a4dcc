//! The GEMM, convolution and depthwise kernels against naive f64 references:
//! odd sizes, strides, padding, dilation, groups, both layouts, several
//! thread counts, and epilogues that must see every output element once.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU32, Ordering};

use bbc_runtime::kernels::activation::{simd_available, Activation};
use bbc_runtime::kernels::isa;
use bbc_runtime::kernels::{
    gemm, gemm_serial, Conv1dShape, Conv2d, Conv2dShape, ConvStrategy, DepthwiseConv2d, Epilogue,
    KernelError, Layout, MatMut, MatRef, Output, PackedMatrix, PanelMatrix, Tile,
};
use bbc_runtime::pool::ThreadPool;

/// Deterministic values in [-1, 1).
fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Runs `f` once per build of the register kernels this CPU has: the AVX-512 one (the
/// plans' default where the CPU has it), then the AVX2 one.
fn for_each_build(mut f: impl FnMut()) {
    if isa::wide_detected() {
        f();
    }
    isa::with_avx2_only(f);
}

/// Each of `cases` gets the `Subsample` plan and matches the reference, with a tile
/// epilogue and with bias and activation epilogues, on each build of the register kernels.
fn check_subsampled(cases: &[Conv2dShape], pools: &[ThreadPool]) {
    for_each_build(|| {
        for &s in cases {
            assert_eq!(
                ConvStrategy::of(&s).unwrap(),
                ConvStrategy::Subsample,
                "{s:?}"
            );
            check_conv(s, pools, ConvStrategy::Subsample);
            check_activation_epilogue(s, pools);
        }
    });
}

/// Asserts `got` matches `want`, with a tolerance scaled by each element's
/// sum of absolute products (`scale`): f32 accumulation error grows with it.
fn assert_close(got: &[f32], want: &[f64], scale: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let tol = 1e-5 * s + 1e-6;
        assert!(
            (g as f64 - w).abs() <= tol,
            "{what}: element {i}: got {g}, want {w} (tolerance {tol})"
        );
    }
}

/// Element `(i, j)` of a strided matrix stored in `data` from `offset`.
fn at(data: &[f32], offset: usize, rs: isize, cs: isize, i: usize, j: usize) -> f64 {
    data[(offset as isize + i as isize * rs + j as isize * cs) as usize] as f64
}

struct Strided {
    data: Vec<f32>,
    offset: usize,
    rs: isize,
    cs: isize,
}

/// A rows x cols matrix in one of several storage orders.
fn strided(rows: usize, cols: usize, kind: usize, seed: u64) -> Strided {
    let (r, c) = (rows as isize, cols as isize);
    let (len, offset, rs, cs) = match kind {
        // Row-major.
        0 => (rows * cols, 0, c, 1),
        // Column-major.
        1 => (rows * cols, 0, 1, r),
        // Row-major with padded rows and every other column.
        2 => (rows * (2 * cols + 3), 0, 2 * c + 3, 2),
        // Rows stored bottom-up.
        _ => (rows * cols, (rows.max(1) - 1) * cols, -c, 1),
    };
    Strided {
        data: random(len.max(1), seed),
        offset,
        rs,
        cs,
    }
}

fn reference_gemm(a: &Strided, b: &Strided, m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut want = vec![0.0; m * n];
    let mut scale = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let prod = at(&a.data, a.offset, a.rs, a.cs, i, p)
                    * at(&b.data, b.offset, b.rs, b.cs, p, j);
                want[i * n + j] += prod;
                scale[i * n + j] += prod.abs();
            }
        }
    }
    (want, scale)
}

#[test]
fn gemm_matches_reference_for_odd_sizes_and_strides() {
    let pools: Vec<ThreadPool> = [1, 2, 3]
        .iter()
        .map(|&t| ThreadPool::new(t).unwrap())
        .collect();
    let shapes = [
        (1, 1, 1),
        (7, 13, 5),
        (37, 53, 300),
        (130, 257, 65),
        (6, 1100, 17),
        (301, 97, 0),
        // One row (a linear layer at batch 1): streamed without packing where `B` has unit
        // column stride (row-major and bottom-up kinds), an odd depth for the 4-row passes.
        (1, 1000, 1283),
        (1, 37, 6),
    ];
    for (si, &(m, n, k)) in shapes.iter().enumerate() {
        for kind_a in 0..4 {
            for kind_b in 0..4 {
                let a = strided(m, k, kind_a, si as u64 * 16 + kind_a as u64);
                let b = strided(k, n, kind_b, 1000 + si as u64 * 16 + kind_b as u64);
                let a_view = MatRef::new(&a.data, a.offset, m, k, a.rs, a.cs).unwrap();
                let b_view = MatRef::new(&b.data, b.offset, k, n, b.rs, b.cs).unwrap();
                let (want, scale) = reference_gemm(&a, &b, m, n, k);
                let pool = &pools[(kind_a + kind_b) % pools.len()];
                let mut c = vec![f32::NAN; m * n];
                gemm(
                    pool,
                    a_view,
                    b_view,
                    MatMut::row_major(&mut c, m, n).unwrap(),
                    Output::Overwrite,
                    Epilogue::NONE,
                )
                .unwrap();
                assert_close(
                    &c,
                    &want,
                    &scale,
                    &format!("gemm {m}x{n}x{k} kinds {kind_a}/{kind_b}"),
                );
            }
        }
    }
}

#[test]
fn gemm_accumulates_into_strided_and_column_major_outputs() {
    let pool = ThreadPool::new(2).unwrap();
    // The second: one row times a row-major `B`, the streamed matrix-vector path.
    for (m, n, k, b_kind) in [(45, 70, 33, 2), (1, 300, 37, 0)] {
        accumulate_into_every_output_kind(&pool, m, n, k, b_kind);
    }
}

fn accumulate_into_every_output_kind(
    pool: &ThreadPool,
    m: usize,
    n: usize,
    k: usize,
    b_kind: usize,
) {
    let a = strided(m, k, 0, 1);
    let b = strided(k, n, b_kind, 2);
    let (prod, scale) = reference_gemm(&a, &b, m, n, k);
    for out_kind in 0..4 {
        let mut c = strided(m, n, out_kind, 3);
        let before: Vec<f64> = (0..m * n)
            .map(|e| at(&c.data, c.offset, c.rs, c.cs, e / n, e % n))
            .collect();
        gemm(
            pool,
            MatRef::new(&a.data, 0, m, k, a.rs, a.cs).unwrap(),
            MatRef::new(&b.data, 0, k, n, b.rs, b.cs).unwrap(),
            MatMut::new(&mut c.data, c.offset, m, n, c.rs, c.cs).unwrap(),
            Output::Accumulate,
            Epilogue::NONE,
        )
        .unwrap();
        let got: Vec<f32> = (0..m * n)
            .map(|e| at(&c.data, c.offset, c.rs, c.cs, e / n, e % n) as f32)
            .collect();
        let want: Vec<f64> = prod.iter().zip(&before).map(|(p, b)| p + b).collect();
        assert_close(
            &got,
            &want,
            &scale,
            &format!("{m}x{n}x{k}: accumulate into kind {out_kind}"),
        );
    }
}

#[test]
fn packed_weights_and_serial_gemm_give_the_same_product() {
    let (m, n, k) = (29, 41, 23);
    let a = strided(m, k, 1, 7);
    let b = strided(k, n, 0, 8);
    let a_view = MatRef::new(&a.data, 0, m, k, a.rs, a.cs).unwrap();
    let packed = PackedMatrix::pack(a_view);
    assert_eq!((packed.rows(), packed.cols()), (m, k));
    assert_eq!(packed.view().row_stride() % 16, 0);
    let (want, scale) = reference_gemm(&a, &b, m, n, k);
    let mut c = vec![0.0; m * n];
    gemm_serial(
        packed.view(),
        MatRef::row_major(&b.data, k, n).unwrap(),
        MatMut::row_major(&mut c, m, n).unwrap(),
        Output::Overwrite,
    )
    .unwrap();
    assert_close(&c, &want, &scale, "packed serial gemm");
}

/// Counts epilogue calls per element and applies `x -> 2x + 1`.
struct CountingEpilogue {
    counts: Vec<AtomicU32>,
    cols: usize,
}

impl CountingEpilogue {
    fn new(rows: usize, cols: usize) -> Self {
        CountingEpilogue {
            counts: (0..rows * cols).map(|_| AtomicU32::new(0)).collect(),
            cols,
        }
    }

    fn visit(&self, mut tile: Tile<'_>) {
        for i in 0..tile.rows() {
            let row = tile.row0() + i;
            let col0 = tile.col0();
            for (j, x) in tile.row_mut(i).iter_mut().enumerate() {
                self.counts[row * self.cols + col0 + j].fetch_add(1, Ordering::Relaxed);
                *x = 2.0 * *x + 1.0;
            }
        }
    }

    fn assert_each_once(&self, what: &str) {
        for (e, c) in self.counts.iter().enumerate() {
            assert_eq!(c.load(Ordering::Relaxed), 1, "{what}: element {e}");
        }
    }
}

#[test]
fn gemm_epilogue_sees_each_finished_element_exactly_once() {
    for threads in [1, 2, 4] {
        let pool = ThreadPool::new(threads).unwrap();
        for &(m, n, k) in &[(3, 5, 7), (200, 1500, 40), (517, 33, 129)] {
            let a = strided(m, k, 0, 11);
            let b = strided(k, n, 0, 12);
            let (want, scale) = reference_gemm(&a, &b, m, n, k);
            let counter = CountingEpilogue::new(m, n);
            let visit = |t: Tile<'_>| counter.visit(t);
            let mut c = vec![0.0; m * n];
            gemm(
                &pool,
                MatRef::row_major(&a.data, m, k).unwrap(),
                MatRef::row_major(&b.data, k, n).unwrap(),
                MatMut::row_major(&mut c, m, n).unwrap(),
                Output::Overwrite,
                Epilogue::from_closure(&visit),
            )
            .unwrap();
            counter.assert_each_once("gemm epilogue");
            let want: Vec<f64> = want.iter().map(|w| 2.0 * w + 1.0).collect();
            let scale: Vec<f64> = scale.iter().map(|s| 2.0 * s).collect();
            assert_close(&c, &want, &scale, "gemm epilogue result");
        }
    }
}

#[test]
fn panel_packed_products_match_the_reference() {
    if !PanelMatrix::supported() {
        return;
    }
    for threads in [1, 2, 3] {
        let pool = ThreadPool::new(threads).unwrap();
        // Partial row and column blocks, one row (a classifier), one column, long and short
        // reductions, and enough work to split over the threads.
        for &(m, n, k) in &[
            (3, 5, 7),
            (1, 1000, 64),
            (49, 200, 300),
            (200, 1, 9),
            (517, 33, 129),
            (196, 384, 1536),
        ] {
            // Any weight strides; A row-major with padded rows, C inside a wider matrix.
            let a = strided(m, k, 0, 31);
            let b = strided(k, n, (m + n) % 4, 32);
            let (want, scale) = reference_gemm(&a, &b, m, n, k);
            let lda = k + 3;
            let mut a_padded = vec![f32::NAN; m * lda];
            for (i, row) in a_padded.chunks_exact_mut(lda).enumerate() {
                row[..k].copy_from_slice(&a.data[i * k..][..k]);
            }
            let panels =
                PanelMatrix::pack(MatRef::new(&b.data, b.offset, k, n, b.rs, b.cs).unwrap());
            assert_eq!((panels.rows(), panels.cols()), (k, n));
            let counter = CountingEpilogue::new(m, n);
            let visit = |t: Tile<'_>| counter.visit(t);
            let ldc = n + 5;
            let mut c = vec![f32::NAN; m * ldc];
            panels
                .gemm(
                    &pool,
                    MatRef::new(&a_padded, 0, m, k, lda as isize, 1).unwrap(),
                    MatMut::new(&mut c, 0, m, n, ldc as isize, 1).unwrap(),
                    Epilogue::from_closure(&visit),
                )
                .unwrap();
            counter.assert_each_once("dense epilogue");
            let got: Vec<f32> = c.chunks_exact(ldc).flat_map(|r| r[..n].to_vec()).collect();
            let want: Vec<f64> = want.iter().map(|w| 2.0 * w + 1.0).collect();
            let scale: Vec<f64> = scale.iter().map(|s| 2.0 * s).collect();
            assert_close(
                &got,
                &want,
                &scale,
                &format!("dense {m}x{n}x{k}, {threads} threads"),
            );
            // Nothing outside the output matrix is written.
            assert!(c
                .chunks_exact(ldc)
                .all(|r| r[n..].iter().all(|v| v.is_nan())));
        }
    }
    // Stored column-major, by the dense kernel and by `gemm`: the epilogue sees `Cᵀ`.
    for threads in [1, 2] {
        let pool = ThreadPool::new(threads).unwrap();
        for &(m, n, k) in &[(3, 5, 7), (49, 200, 300), (517, 33, 129)] {
            let a = strided(m, k, 0, 41);
            let b = strided(k, n, 0, 42);
            let (want, scale) = reference_gemm(&a, &b, m, n, k);
            let a_view = MatRef::row_major(&a.data, m, k).unwrap();
            let b_view = MatRef::row_major(&b.data, k, n).unwrap();
            let panels = PanelMatrix::pack(b_view);
            let ld = m + 2;
            for dense in [true, false] {
                let counter = CountingEpilogue::new(n, m);
                let visit = |t: Tile<'_>| counter.visit(t);
                let mut c = vec![f32::NAN; n * ld];
                let out = MatMut::new(&mut c, 0, m, n, 1, ld as isize).unwrap();
                let epilogue = Epilogue::from_closure(&visit);
                if dense {
                    panels.gemm(&pool, a_view, out, epilogue).unwrap();
                } else {
                    gemm(&pool, a_view, b_view, out, Output::Overwrite, epilogue).unwrap();
                }
                let what = format!("column-major {m}x{n}x{k}, dense {dense}, {threads} threads");
                counter.assert_each_once(&what);
                let got: Vec<f32> = (0..m * n).map(|e| c[e % n * ld + e / n]).collect();
                let want: Vec<f64> = want.iter().map(|w| 2.0 * w + 1.0).collect();
                let scale: Vec<f64> = scale.iter().map(|s| 2.0 * s).collect();
                assert_close(&got, &want, &scale, &what);
                assert!(c
                    .chunks_exact(ld)
                    .all(|col| col[m..].iter().all(|v| v.is_nan())));
            }
        }
    }
    // Shapes that do not fit, and a column-strided A, are errors.
    let pool = ThreadPool::new(1).unwrap();
    let w = random(12, 1);
    let panels = PanelMatrix::pack(MatRef::row_major(&w, 3, 4).unwrap());
    let x = random(12, 2);
    let mut c = [0.0; 8];
    let bad = [
        (MatRef::row_major(&x, 2, 4).unwrap(), 4),
        (MatRef::new(&x, 0, 2, 3, 1, 2).unwrap(), 4),
    ];
    for (a, n) in bad {
        let c = MatMut::row_major(&mut c[..2 * n], 2, n).unwrap();
        assert!(matches!(
            panels.gemm(&pool, a, c, Epilogue::NONE),
            Err(KernelError::Shape(_))
        ));
    }
}

/// A per-row bias through the raw ABI, as generated code would implement it.
unsafe extern "C" fn add_row_bias(
    ctx: *const c_void,
    tile: *mut f32,
    row0: usize,
    rows: usize,
    _col0: usize,
    cols: usize,
    ld: usize,
) {
    let bias = ctx.cast::<f32>();
    for i in 0..rows {
        let b = *bias.add(row0 + i);
        for j in 0..cols {
            *tile.add(i * ld + j) += b;
        }
    }
}

#[test]
fn raw_epilogue_abi_adds_a_bias() {
    let pool = ThreadPool::new(2).unwrap();
    let (m, n, k) = (66, 300, 19);
    let a = strided(m, k, 0, 21);
    let b = strided(k, n, 0, 22);
    let bias = random(m, 23);
    let (want, scale) = reference_gemm(&a, &b, m, n, k);
    let mut c = vec![0.0; m * n];
    // SAFETY: `add_row_bias` follows the ABI and only reads `bias`, which
    // outlives the call.
    let epilogue = unsafe { Epilogue::from_raw(add_row_bias, bias.as_ptr().cast()) };
    gemm(
        &pool,
        MatRef::row_major(&a.data, m, k).unwrap(),
        MatRef::row_major(&b.data, k, n).unwrap(),
        MatMut::row_major(&mut c, m, n).unwrap(),
        Output::Overwrite,
        epilogue,
    )
    .unwrap();
    let want: Vec<f64> = want
        .iter()
        .enumerate()
        .map(|(e, w)| w + bias[e / n] as f64)
        .collect();
    assert_close(&c, &want, &scale, "raw bias epilogue");
}

#[test]
fn gemm_rejects_bad_shapes_and_views() {
    let pool = ThreadPool::new(1).unwrap();
    let data = vec![0.0; 12];
    let mut out = vec![0.0; 12];
    assert!(matches!(
        MatRef::new(&data, 0, 4, 4, 4, 1),
        Err(KernelError::BufferTooSmall { .. })
    ));
    assert!(matches!(
        MatRef::new(&data, 0, 3, 4, -4, 1),
        Err(KernelError::Shape(_))
    ));
    assert!(matches!(
        MatMut::new(&mut out, 0, 3, 4, 1, 1),
        Err(KernelError::AliasingOutput { .. })
    ));
    let a = MatRef::row_major(&data, 3, 4).unwrap();
    let c = MatMut::row_major(&mut out, 3, 4).unwrap();
    assert!(matches!(
        gemm(&pool, a, a, c, Output::Overwrite, Epilogue::NONE),
        Err(KernelError::Shape(_))
    ));
    let closure = |_: Tile<'_>| {};
    // An epilogue sees C or Cᵀ row-major: C needs a unit stride on one axis.
    let neither = MatMut::new(&mut out, 0, 2, 2, 2, 5).unwrap();
    let sq = MatRef::row_major(&data, 2, 2).unwrap();
    assert!(matches!(
        gemm(
            &pool,
            sq,
            sq,
            neither,
            Output::Overwrite,
            Epilogue::from_closure(&closure)
        ),
        Err(KernelError::Shape(_))
    ));
}

#[test]
fn epilogue_panic_is_an_error_not_a_crash() {
    let pool = ThreadPool::new(2).unwrap();
    let data = random(64 * 64, 5);
    let mut out = vec![0.0; 64 * 64];
    let boom = |t: Tile<'_>| {
        if t.row0() == 0 {
            panic!("epilogue failed");
        }
    };
    let a = MatRef::row_major(&data, 64, 64).unwrap();
    let err = gemm(
        &pool,
        a,
        a,
        MatMut::row_major(&mut out, 64, 64).unwrap(),
        Output::Overwrite,
        Epilogue::from_closure(&boom),
    )
    .unwrap_err();
    assert!(err.to_string().contains("epilogue failed"), "{err}");
}

// ---- convolutions ----

/// Naive conv2d over NCHW data in f64: (output, sum of |products|).
fn reference_conv(
    s: &Conv2dShape,
    input: &[f32],
    weight: &[f32],
) -> (Vec<f64>, Vec<f64>, [usize; 2]) {
    let [h, w] = s.in_size;
    let [kh, kw] = s.kernel;
    let oh = (h + 2 * s.padding[0] - (kh - 1) * s.dilation[0] - 1) / s.stride[0] + 1;
    let ow = (w + 2 * s.padding[1] - (kw - 1) * s.dilation[1] - 1) / s.stride[1] + 1;
    let (cig, cog) = (s.in_channels / s.groups, s.out_channels / s.groups);
    let mut out = vec![0.0; s.batch * s.out_channels * oh * ow];
    let mut scale = vec![0.0; out.len()];
    for b in 0..s.batch {
        for co in 0..s.out_channels {
            let g = co / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut acc, mut abs) = (0.0f64, 0.0f64);
                    for ci in 0..cig {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * s.stride[0] + ky * s.dilation[0]) as isize
                                    - s.padding[0] as isize;
                                let ix = (ox * s.stride[1] + kx * s.dilation[1]) as isize
                                    - s.padding[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let x = input[((b * s.in_channels + g * cig + ci) * h
                                    + iy as usize)
                                    * w
                                    + ix as usize];
                                let wt = weight[((co * cig + ci) * kh + ky) * kw + kx];
                                acc += x as f64 * wt as f64;
                                abs += (x as f64 * wt as f64).abs();
                            }
                        }
                    }
                    let e = ((b * s.out_channels + co) * oh + oy) * ow + ox;
                    out[e] = acc;
                    scale[e] = abs;
                }
            }
        }
    }
    (out, scale, [oh, ow])
}

/// `[B, C, P]` to `[B, P, C]` (or back, with the roles of `c` and `p` swapped).
fn transpose_inner<T: Copy>(data: &[T], batch: usize, c: usize, p: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(data.len());
    for b in 0..batch {
        for pi in 0..p {
            for ci in 0..c {
                out.push(data[(b * c + ci) * p + pi]);
            }
        }
    }
    out
}

/// Runs `shape` in both layouts on each pool and checks the output and the
/// epilogue's coverage against the NCHW reference. `expected` is the NCHW strategy; NHWC
/// computes what Winograd would by im2col.
fn check_conv(shape: Conv2dShape, pools: &[ThreadPool], expected: ConvStrategy) {
    check_conv_with(shape, pools, expected, None);
}

/// Im2col on `s`, forced where the direct kernel (stems), the channels-last or the
/// subsampling plan is what `Conv2d::new` picks, which then runs too.
fn check_im2col(s: Conv2dShape, pools: &[ThreadPool]) {
    let chosen = ConvStrategy::of(&s).unwrap();
    assert!(
        matches!(
            chosen,
            ConvStrategy::Im2col
                | ConvStrategy::Direct
                | ConvStrategy::ChannelsLast
                | ConvStrategy::Subsample
        ),
        "{s:?}: {chosen:?}"
    );
    check_conv(s, pools, chosen);
    if chosen != ConvStrategy::Im2col {
        check_conv_with(s, pools, ConvStrategy::Im2col, Some(ConvStrategy::Im2col));
    }
}

/// [`check_conv`], with the strategy forced (NCHW only) when `forced` is given.
fn check_conv_with(
    shape: Conv2dShape,
    pools: &[ThreadPool],
    expected: ConvStrategy,
    forced: Option<ConvStrategy>,
) {
    let [h, w] = shape.in_size;
    let input = random(shape.batch * shape.in_channels * h * w, 31);
    let weight = random(
        shape.out_channels * (shape.in_channels / shape.groups) * shape.kernel[0] * shape.kernel[1],
        32,
    );
    let (want, scale, [oh, ow]) = reference_conv(&shape, &input, &weight);
    let pixels = oh * ow;
    let want: Vec<f64> = want.iter().map(|v| 2.0 * v + 1.0).collect();
    let scale: Vec<f64> = scale.iter().map(|s| 2.0 * s).collect();
    let layouts: &[Layout] = match forced {
        Some(_) => &[Layout::Nchw],
        None => &[Layout::Nchw, Layout::Nhwc],
    };
    for &layout in layouts {
        let s = Conv2dShape { layout, ..shape };
        let expected = match (layout, expected) {
            (Layout::Nhwc, ConvStrategy::Winograd) => ConvStrategy::Im2col,
            (Layout::Nhwc, ConvStrategy::Direct1x1 | ConvStrategy::Lanes1x1) => {
                ConvStrategy::Pointwise
            }
            (Layout::Nhwc, ConvStrategy::ChannelsLast)
                if s.kernel == [1, 1] && s.stride == [1, 1] && s.padding == [0, 0] =>
            {
                ConvStrategy::Pointwise
            }
            (Layout::Nhwc, ConvStrategy::Direct | ConvStrategy::ChannelsLast) => {
                ConvStrategy::Im2col
            }
            // NHWC gathers 1x1s only.
            (Layout::Nhwc, ConvStrategy::Subsample) if s.kernel != [1, 1] => ConvStrategy::Im2col,
            _ => expected,
        };
        for pool in pools {
            let conv = match forced {
                Some(strategy) => Conv2d::with_strategy(s, &weight, pool.threads(), strategy),
                None => Conv2d::new(s, &weight, pool.threads()),
            }
            .unwrap();
            assert_eq!(conv.strategy(), expected, "{s:?}");
            assert_eq!(conv.out_size(), [oh, ow]);
            let x = match layout {
                Layout::Nchw => input.clone(),
                Layout::Nhwc => transpose_inner(&input, s.batch, s.in_channels, h * w),
            };
            let mut out = vec![f32::NAN; conv.output_len()];
            let mut scratch = vec![f32::NAN; conv.scratch_len(pool.threads())];
            let (rows, cols) = match layout {
                Layout::Nchw => (s.batch * s.out_channels, pixels),
                Layout::Nhwc => (s.batch * pixels, s.out_channels),
            };
            let counter = CountingEpilogue::new(rows, cols);
            let visit = |t: Tile<'_>| counter.visit(t);
            conv.run(
                pool,
                &x,
                &mut out,
                &mut scratch,
                Epilogue::from_closure(&visit),
            )
            .unwrap();
            let what = format!("{s:?} on {} threads", pool.threads());
            counter.assert_each_once(&what);
            let got = match layout {
                Layout::Nchw => out,
                Layout::Nhwc => transpose_inner(&out, s.batch, pixels, s.out_channels),
            };
            assert_close(&got, &want, &scale, &what);
        }
    }
}

/// A convolution with stride 1, no padding and no dilation.
fn shape(
    batch: usize,
    channels: [usize; 2],
    in_size: [usize; 2],
    kernel: [usize; 2],
    groups: usize,
) -> Conv2dShape {
    Conv2dShape {
        batch,
        in_channels: channels[0],
        out_channels: channels[1],
        in_size,
        kernel,
        stride: [1, 1],
        padding: [0, 0],
        dilation: [1, 1],
        groups,
        layout: Layout::Nchw,
    }
}

/// `s` with the given stride, padding and dilation.
fn geometry(
    s: Conv2dShape,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
) -> Conv2dShape {
    Conv2dShape {
        stride,
        padding,
        dilation,
        ..s
    }
}

fn pools() -> Vec<ThreadPool> {
    vec![ThreadPool::new(1).unwrap(), ThreadPool::new(3).unwrap()]
}

#[test]
fn pointwise_conv_reads_the_input_in_place() {
    let pools = pools();
    let cases = [
        shape(2, [5, 7], [9, 9], [1, 1], 1),
        shape(1, [12, 9], [7, 5], [1, 1], 3),
        shape(1, [600, 40], [33, 35], [1, 1], 1),
    ];
    // The first is the small-map kernel's with AVX-512.
    isa::with_avx2_only(|| {
        for s in cases {
            check_conv(s, &pools, ConvStrategy::Pointwise);
            let conv =
                Conv2d::new(s, &random(s.out_channels * s.in_channels / s.groups, 1), 2).unwrap();
            assert_eq!(conv.scratch_len(2), 0);
        }
    });
}

/// The shapes each 1x1 register kernel takes, on each build this CPU has: with AVX-512 the
/// small-map kernel takes maps up to 14x14 (beside the pixel-lane kernel only for long
/// reductions over whole 32-channel blocks); with AVX2 7x7 maps run channels-last on the
/// dense kernel; the rest go through the GEMM.
#[test]
fn direct_1x1_conv_is_chosen_where_it_applies() {
    use ConvStrategy::{ChannelsLast, Direct1x1, Lanes1x1, Pointwise};
    // Each shape's plan with AVX-512, with AVX2, and without either.
    let table = [
        (
            shape(1, [24, 144], [56, 56], [1, 1], 1),
            [Direct1x1, Direct1x1, Pointwise],
        ),
        (
            shape(1, [256, 64], [12, 12], [1, 1], 1),
            [Lanes1x1, Direct1x1, Pointwise],
        ),
        (
            shape(1, [256, 72], [12, 12], [1, 1], 1),
            [Direct1x1, Direct1x1, Pointwise],
        ),
        (
            shape(1, [128, 64], [12, 12], [1, 1], 1),
            [Direct1x1, Direct1x1, Pointwise],
        ),
        (
            shape(1, [192, 1152], [7, 7], [1, 1], 1),
            [Lanes1x1, ChannelsLast, Pointwise],
        ),
        (
            shape(1, [2048, 512], [7, 7], [1, 1], 1),
            [Lanes1x1, ChannelsLast, Pointwise],
        ),
        (
            shape(1, [512, 128], [28, 28], [1, 1], 1),
            [Lanes1x1, Direct1x1, Pointwise],
        ),
        (
            shape(1, [256, 64], [28, 28], [1, 1], 1),
            [Direct1x1, Direct1x1, Pointwise],
        ),
        (
            shape(1, [512, 64], [56, 56], [1, 1], 1),
            [Direct1x1, Direct1x1, Pointwise],
        ),
        // Deeper reductions on larger maps and groups stay on the GEMM.
        (
            shape(1, [513, 64], [56, 56], [1, 1], 1),
            [Pointwise, Pointwise, Pointwise],
        ),
        (
            shape(1, [1024, 256], [14, 14], [1, 1], 1),
            [Lanes1x1, Pointwise, Pointwise],
        ),
        (
            shape(1, [24, 144], [56, 56], [1, 1], 2),
            [Pointwise, Pointwise, Pointwise],
        ),
        (
            shape(1, [24, 144], [7, 7], [1, 1], 2),
            [Pointwise, Pointwise, Pointwise],
        ),
        // Channel planes 16 KiB apart share 8 sets of L2: 144 of them thrash it, 64 fit;
        // planes 64 KiB apart share 2, so 16 fit and 32 do not.
        (
            shape(1, [144, 24], [64, 64], [1, 1], 1),
            [Pointwise, Pointwise, Pointwise],
        ),
        (
            shape(1, [64, 24], [64, 64], [1, 1], 1),
            [Direct1x1, Direct1x1, Pointwise],
        ),
        (
            shape(1, [16, 96], [128, 128], [1, 1], 1),
            [Direct1x1, Direct1x1, Pointwise],
        ),
        (
            shape(1, [32, 16], [128, 128], [1, 1], 1),
            [Pointwise, Pointwise, Pointwise],
        ),
    ];
    for_each_build(|| {
        let build = if isa::wide_available() {
            0
        } else if simd_available() {
            1
        } else {
            2
        };
        for (s, want) in table {
            assert_eq!(ConvStrategy::of(&s).unwrap(), want[build], "{s:?}");
            let nhwc = Conv2dShape {
                layout: Layout::Nhwc,
                ..s
            };
            assert_eq!(ConvStrategy::of(&nhwc).unwrap(), Pointwise);
        }
    });
}

/// 1x1 convolutions on 7x7 maps and smaller run channels-last with AVX2 (with AVX-512 the
/// small-map kernel takes them), the dense kernel storing each block transposed into the
/// NCHW output: values and epilogue coverage against the reference (odd channel counts,
/// several images, 1-3 threads), a bias and activation in registers, and a strided one
/// whose gathered pixels take the same plan.
#[test]
fn small_map_1x1_convs_run_channels_last() {
    if !simd_available() {
        eprintln!("skipped: the dense kernel needs AVX2 and FMA");
        return;
    }
    isa::with_avx2_only(small_map_1x1_convs_on_avx2);
}

fn small_map_1x1_convs_on_avx2() {
    let pools = pools();
    for s in [
        shape(1, [192, 1152], [7, 7], [1, 1], 1),
        shape(2, [37, 21], [5, 9], [1, 1], 1),
        shape(3, [300, 70], [1, 1], [1, 1], 1),
    ] {
        check_conv(s, &pools, ConvStrategy::ChannelsLast);
        check_activation_epilogue(s, &pools);
    }
    let strided = geometry(
        shape(2, [40, 33], [14, 13], [1, 1], 1),
        [2, 2],
        [0, 0],
        [1, 1],
    );
    check_conv(strided, &pools, ConvStrategy::Subsample);
    check_activation_epilogue(strided, &pools);
}

/// The direct kernel takes NCHW convolutions with a spatial kernel, stride 1 or 2, one
/// group and at most four input channels (the stems), on this CPU; the rest stay on im2col
/// or Winograd.
#[test]
fn direct_conv_is_chosen_for_stems() {
    let direct = simd_available();
    let strided = |s, stride, pad| geometry(s, stride, pad, [1, 1]);
    for (s, takes) in [
        (
            strided(shape(1, [3, 64], [224, 224], [7, 7], 1), [2, 2], [3, 3]),
            direct,
        ),
        (
            strided(shape(1, [3, 32], [224, 224], [3, 3], 1), [2, 2], [1, 1]),
            direct,
        ),
        (
            strided(shape(2, [4, 8], [9, 9], [5, 3], 1), [1, 1], [2, 1]),
            direct,
        ),
        // More channels, stride 4, dilation, unequal strides and groups do not.
        (
            strided(shape(1, [5, 8], [16, 16], [3, 3], 1), [2, 2], [1, 1]),
            false,
        ),
        (
            strided(shape(1, [3, 96], [224, 224], [4, 4], 1), [4, 4], [0, 0]),
            false,
        ),
        (
            geometry(
                shape(1, [3, 8], [16, 16], [3, 3], 1),
                [1, 1],
                [2, 2],
                [2, 2],
            ),
            false,
        ),
        (
            strided(shape(1, [3, 8], [16, 16], [3, 3], 1), [2, 1], [1, 1]),
            false,
        ),
        (
            strided(shape(1, [4, 8], [16, 16], [3, 3], 2), [1, 1], [1, 1]),
            false,
        ),
    ] {
        let chosen = ConvStrategy::of(&s).unwrap();
        assert_eq!(chosen == ConvStrategy::Direct, takes, "{s:?}: {chosen:?}");
        let nhwc = Conv2dShape {
            layout: Layout::Nhwc,
            ..s
        };
        assert_ne!(ConvStrategy::of(&nhwc).unwrap(), ConvStrategy::Direct);
    }
}

/// The direct kernel against the f64 reference: strides 1 and 2, odd and even paddings
/// (both phase orders), rectangular kernels, widths whose grid tiles cross rows, partial
/// 6-channel blocks, batches, 1-3 threads; with a tile epilogue (which must see each
/// element once), and with a bias and an activation applied in registers.
#[test]
fn direct_conv_matches_the_reference() {
    if !simd_available() {
        eprintln!("skipped: the direct kernel needs AVX2 and FMA");
        return;
    }
    let pools = [1, 2, 3].map(|t| ThreadPool::new(t).unwrap());
    let strided = |s, stride, pad| geometry(s, stride, pad, [1, 1]);
    let cases = [
        strided(shape(1, [3, 16], [23, 29], [7, 7], 1), [2, 2], [3, 3]),
        strided(shape(2, [3, 13], [20, 21], [3, 3], 1), [2, 2], [1, 1]),
        strided(shape(1, [2, 7], [17, 16], [3, 3], 1), [2, 2], [0, 0]),
        strided(shape(1, [4, 9], [9, 40], [3, 5], 1), [1, 1], [1, 2]),
        strided(shape(3, [1, 6], [6, 5], [2, 2], 1), [2, 2], [1, 0]),
        strided(shape(1, [3, 32], [64, 64], [3, 3], 1), [2, 2], [1, 1]),
    ];
    for_each_build(|| {
        for s in cases {
            check_conv_with(s, &pools, ConvStrategy::Direct, Some(ConvStrategy::Direct));
            check_activation_epilogue(s, &pools);
        }
    });
}

/// The channels-last plan of NCHW convolutions against the f64 reference: strides,
/// padding, dilation, rectangular kernels, batches whose product tiles cross images, on
/// 1-3 threads, with a tile epilogue that must see each NCHW element once and with a bias
/// and an activation.
#[test]
fn channels_last_conv_matches_the_reference() {
    // With AVX-512 the 7x7 map's 3x3 with 40 channels runs as Winograd.
    isa::with_avx2_only(channels_last_on_avx2);
}

fn channels_last_on_avx2() {
    let pools = [1, 2, 3].map(|t| ThreadPool::new(t).unwrap());
    let cases = [
        geometry(
            shape(1, [16, 24], [15, 14], [3, 3], 1),
            [2, 2],
            [1, 1],
            [1, 1],
        ),
        geometry(shape(3, [8, 13], [7, 7], [3, 3], 1), [1, 1], [1, 1], [1, 1]),
        geometry(
            shape(2, [5, 9], [12, 11], [3, 5], 1),
            [2, 1],
            [3, 2],
            [1, 2],
        ),
        geometry(
            shape(1, [40, 37], [7, 7], [3, 3], 1),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
    ];
    for s in cases {
        assert_eq!(
            ConvStrategy::of(&s).unwrap(),
            ConvStrategy::ChannelsLast,
            "{s:?}"
        );
        check_conv_with(
            s,
            &pools,
            ConvStrategy::ChannelsLast,
            Some(ConvStrategy::ChannelsLast),
        );
        check_activation_epilogue(s, &pools);
    }
    // Groups and channels-last inputs keep im2col.
    let grouped = geometry(shape(1, [8, 8], [9, 9], [3, 3], 2), [2, 2], [1, 1], [1, 1]);
    assert_eq!(ConvStrategy::of(&grouped).unwrap(), ConvStrategy::Im2col);
}

/// Strided 1x1 convolutions gather the pixels they read and run the stride-1 plan on them,
/// against the f64 reference in both layouts on 1-3 threads: strides 2 and 3 over even and
/// odd sizes, a rectangular stride, batches, groups, few input channels (the inner plan is
/// the direct 1x1 kernel where the CPU has AVX2) and many (the GEMM over the input in
/// place), with a tile epilogue that must see each element once and with a bias and an
/// activation.
#[test]
fn strided_1x1_convs_run_the_stride_1_plan_on_gathered_pixels() {
    let pools = [1, 2, 3].map(|t| ThreadPool::new(t).unwrap());
    let cases = [
        geometry(
            shape(2, [12, 20], [9, 9], [1, 1], 1),
            [2, 2],
            [0, 0],
            [1, 1],
        ),
        geometry(
            shape(1, [8, 24], [16, 16], [1, 1], 1),
            [2, 2],
            [0, 0],
            [1, 1],
        ),
        geometry(
            shape(1, [5, 7], [10, 11], [1, 1], 1),
            [3, 3],
            [0, 0],
            [1, 1],
        ),
        geometry(shape(2, [6, 9], [9, 8], [1, 1], 1), [2, 1], [0, 0], [1, 1]),
        geometry(
            shape(1, [8, 12], [11, 9], [1, 1], 2),
            [2, 2],
            [0, 0],
            [1, 1],
        ),
        geometry(
            shape(1, [300, 20], [34, 34], [1, 1], 1),
            [2, 2],
            [0, 0],
            [1, 1],
        ),
    ];
    check_subsampled(&cases, &pools);
    // Padded 1x1s and 1x1 depthwise convolutions keep their plans.
    let padded = geometry(shape(1, [4, 4], [5, 5], [1, 1], 1), [2, 2], [1, 1], [1, 1]);
    assert_ne!(ConvStrategy::of(&padded).unwrap(), ConvStrategy::Subsample);
    let depthwise = geometry(shape(1, [4, 4], [6, 6], [1, 1], 4), [2, 2], [0, 0], [1, 1]);
    assert_eq!(
        ConvStrategy::of(&depthwise).unwrap(),
        ConvStrategy::Depthwise
    );
}

/// NCHW "patchify" stems (kernel no larger than the stride, unpadded, at most 4 channels)
/// gather a plane per (channel, tap) and run the 1x1 register kernel over them: ConvNeXt's
/// 4x4/4 stem, a 2x2/2 one, a non-square kernel and a kernel smaller than its stride, batch
/// 2. Each is checked in both layouts against the reference and im2col, with each epilogue
/// element visited once; forced, the gather also runs grouped and onto the `gemm` crate
/// (many planes), which `Conv2d::new` leaves to channels-last.
#[test]
fn patchify_convs_run_a_1x1_plan_on_gathered_planes() {
    let pools = [1, 2, 3].map(|t| ThreadPool::new(t).unwrap());
    let cases = [
        geometry(
            shape(2, [3, 8], [48, 52], [4, 4], 1),
            [4, 4],
            [0, 0],
            [1, 1],
        ),
        geometry(
            shape(1, [4, 20], [24, 26], [2, 2], 1),
            [2, 2],
            [0, 0],
            [1, 1],
        ),
        geometry(
            shape(1, [2, 7], [36, 26], [3, 2], 1),
            [3, 2],
            [0, 0],
            [1, 1],
        ),
        geometry(
            shape(1, [4, 6], [38, 39], [2, 2], 1),
            [3, 3],
            [0, 0],
            [1, 1],
        ),
    ];
    check_subsampled(&cases, &pools);
    let grouped = geometry(
        shape(1, [8, 6], [20, 20], [2, 2], 2),
        [2, 2],
        [0, 0],
        [1, 1],
    );
    let many_planes = geometry(
        shape(1, [80, 24], [20, 20], [2, 2], 1),
        [2, 2],
        [0, 0],
        [1, 1],
    );
    for s in [grouped, many_planes] {
        assert_ne!(ConvStrategy::of(&s).unwrap(), ConvStrategy::Subsample);
        check_conv_with(
            s,
            &pools,
            ConvStrategy::Subsample,
            Some(ConvStrategy::Subsample),
        );
    }
    // Overlapping windows, padding or dilation keep their plans.
    for s in [
        geometry(
            shape(1, [3, 8], [48, 40], [3, 3], 1),
            [2, 2],
            [0, 0],
            [1, 1],
        ),
        geometry(
            shape(1, [3, 8], [48, 40], [2, 2], 1),
            [2, 2],
            [1, 1],
            [1, 1],
        ),
        geometry(
            shape(1, [3, 8], [48, 40], [2, 2], 1),
            [2, 2],
            [0, 0],
            [2, 2],
        ),
    ] {
        assert_ne!(
            ConvStrategy::of(&s).unwrap(),
            ConvStrategy::Subsample,
            "{s:?}"
        );
        assert!(
            Conv2d::with_strategy(s, &vec![0.0; 8 * 3 * 9], 1, ConvStrategy::Subsample).is_err()
        );
    }
}

/// The direct 1x1 kernel against the f64 reference: full and partial 16-pixel and 6-channel
/// blocks, reductions in one and two blocks, batches, 1-3 threads, a weight packed on
/// several threads; with a tile epilogue (which must see each element once),
/// and with a bias and an activation it applies in registers.
#[test]
fn direct_1x1_conv_matches_the_reference() {
    if !simd_available() {
        eprintln!("skipped: the direct 1x1 kernel needs AVX2 and FMA");
        return;
    }
    let pools = [1, 2, 3].map(|t| ThreadPool::new(t).unwrap());
    let cases = [
        shape(1, [24, 144], [12, 12], [1, 1], 1),
        shape(2, [17, 13], [13, 11], [1, 1], 1),
        shape(3, [8, 40], [16, 9], [1, 1], 1),
        shape(1, [256, 7], [11, 13], [1, 1], 1),
        shape(1, [3, 96], [40, 41], [1, 1], 1),
        // Reductions in two blocks (256 + 44 and 256 + 256 input channels), the second with
        // enough output channels for its input blocks to be copied.
        shape(1, [300, 13], [13, 11], [1, 1], 1),
        shape(2, [512, 100], [12, 12], [1, 1], 1),
        // A weight large enough to be packed on several threads, its last 6-channel block
        // partial.
        shape(1, [256, 1030], [12, 12], [1, 1], 1),
    ];
    for_each_build(|| check_1x1(&cases, &pools, ConvStrategy::Direct1x1));
}

/// The small-map 1x1 kernel (output channels in the lanes, AVX-512 only) against the f64
/// reference: full and partial 7-pixel tiles, full and partial 32-channel blocks and
/// 8-channel groups, one pixel, long reductions on maps the pixel-lane kernel also takes,
/// batches, 1-3 threads, each epilogue path. The AVX2 build picks another plan.
#[test]
fn lanes_1x1_conv_matches_the_reference() {
    if !isa::wide_available() {
        eprintln!("skipped: the small-map 1x1 kernel needs AVX-512");
        return;
    }
    let pools = [1, 2, 3].map(|t| ThreadPool::new(t).unwrap());
    let cases = [
        shape(1, [64, 64], [7, 7], [1, 1], 1),
        shape(2, [300, 40], [7, 7], [1, 1], 1),
        shape(1, [5, 13], [3, 5], [1, 1], 1),
        shape(3, [33, 70], [1, 1], [1, 1], 1),
        shape(1, [17, 32], [10, 10], [1, 1], 1),
        shape(1, [1024, 96], [14, 14], [1, 1], 1),
        shape(1, [512, 64], [28, 28], [1, 1], 1),
        // A weight packed on several threads, whole 32-channel blocks each, the last partial.
        shape(1, [1024, 300], [7, 7], [1, 1], 1),
    ];
    for s in cases {
        assert_eq!(
            ConvStrategy::of(&s).unwrap(),
            ConvStrategy::Lanes1x1,
            "{s:?}"
        );
    }
    check_1x1(&cases, &pools, ConvStrategy::Lanes1x1);
    isa::with_avx2_only(|| {
        for s in cases {
            assert_ne!(
                ConvStrategy::of(&s).unwrap(),
                ConvStrategy::Lanes1x1,
                "{s:?}"
            );
        }
    });
}

/// A 1x1 register kernel (`strategy`) on `cases` against the reference, on the build the
/// plans pick: with a tile epilogue, with bias, activation and residual epilogues, and a
/// bias that is not one per channel refused.
fn check_1x1(cases: &[Conv2dShape], pools: &[ThreadPool], strategy: ConvStrategy) {
    for &s in cases {
        check_conv_with(s, pools, strategy, Some(strategy));
        check_activation_epilogue(s, pools);
        // A bias that is not one per channel is refused, not read past.
        let conv = Conv2d::new(s, &random(s.out_channels * s.in_channels, 1), 1).unwrap();
        let input = random(conv.input_len(), 2);
        let mut out = vec![0.0; conv.output_len()];
        let mut scratch = vec![0.0; conv.scratch_len(1)];
        let bias = random(s.out_channels - 1, 3);
        let short = Epilogue::activation(Activation::Relu, Some(&bias));
        let err = conv.run(&pools[0], &input, &mut out, &mut scratch, short);
        assert!(matches!(err, Err(KernelError::Shape(_))), "{err:?}");
    }
}

/// A bias-and-activation epilogue ([`Epilogue::activation`]) on the other strategies: the
/// GEMM-based ones run it on finished tiles; the depthwise kernel on small maps applies an
/// activation without a bias to its accumulators (eight channels per task: 13 leaves a
/// partial group) and runs one with a bias on finished tiles.
#[test]
fn activation_epilogue_on_every_strategy() {
    let pools = [1, 2].map(|t| ThreadPool::new(t).unwrap());
    let cases = [
        shape(2, [16, 20], [14, 14], [3, 3], 1),
        geometry(
            shape(1, [5, 12], [9, 11], [3, 3], 1),
            [2, 2],
            [1, 1],
            [1, 1],
        ),
        shape(1, [5, 7], [6, 9], [1, 1], 1),
        geometry(
            shape(2, [13, 13], [7, 9], [3, 3], 13),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
        geometry(
            shape(1, [16, 16], [14, 14], [5, 5], 16),
            [2, 2],
            [2, 2],
            [1, 1],
        ),
        geometry(
            shape(1, [24, 24], [28, 28], [3, 3], 24),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
    ];
    for s in cases {
        check_activation_epilogue(s, &pools);
    }
}

/// `act(conv + bias[channel])`, `act(conv)` and `act((conv + bias[channel]) + residual)`,
/// through [`Epilogue::activation`] and [`Epilogue::activation_with_residual`] against the
/// f64 reference, NCHW, for ReLU and SiLU, with the strategy `Conv2d::new` picks.
fn check_activation_epilogue(s: Conv2dShape, pools: &[ThreadPool]) {
    check_activation_epilogue_with(s, pools, true, false);
    check_activation_epilogue_with(s, pools, false, false);
    check_activation_epilogue_with(s, pools, true, true);
}

fn check_activation_epilogue_with(
    s: Conv2dShape,
    pools: &[ThreadPool],
    with_bias: bool,
    with_residual: bool,
) {
    let taps = s.kernel[0] * s.kernel[1];
    let input = random(s.batch * s.in_channels * s.in_size[0] * s.in_size[1], 41);
    let weight = random(s.out_channels * s.in_channels / s.groups * taps, 42);
    let bias = if with_bias {
        random(s.out_channels, 43)
    } else {
        vec![0.0; s.out_channels]
    };
    let (want, scale, [oh, ow]) = reference_conv(&s, &input, &weight);
    let pixels = oh * ow;
    let residual = if with_residual {
        random(want.len(), 44)
    } else {
        vec![0.0; want.len()]
    };
    for (act, f) in [
        (Activation::Relu, (|x: f64| x.max(0.0)) as fn(f64) -> f64),
        (Activation::Silu, |x: f64| x / (1.0 + (-x).exp())),
    ] {
        let want: Vec<f64> = want
            .iter()
            .enumerate()
            .map(|(i, &v)| f(v + bias[i / pixels % s.out_channels] as f64 + residual[i] as f64))
            .collect();
        // The activation's own error (about 1e-7 of its result) on top of the sum's.
        let scale: Vec<f64> = scale.iter().map(|&x| x + 1.0).collect();
        for pool in pools {
            let conv = Conv2d::new(s, &weight, pool.threads()).unwrap();
            let mut out = vec![f32::NAN; conv.output_len()];
            let mut scratch = vec![f32::NAN; conv.scratch_len(pool.threads())];
            let bias = with_bias.then_some(&bias[..]);
            let epilogue = if with_residual {
                Epilogue::activation_with_residual(act, bias, &residual)
            } else {
                Epilogue::activation(act, bias)
            };
            conv.run(pool, &input, &mut out, &mut scratch, epilogue)
                .unwrap();
            let what = format!(
                "{s:?} ({:?}), {act:?}, bias {with_bias}, residual {with_residual}, on {} \
                 threads",
                conv.strategy(),
                pool.threads()
            );
            assert_close(&out, &want, &scale, &what);
        }
    }
}

#[test]
fn im2col_conv_handles_stride_padding_dilation_and_groups() {
    let pools = pools();
    let cases = [
        // 1x1 stride 2 (ResNet downsample).
        geometry(shape(1, [8, 12], [9, 9], [1, 1], 1), [2, 2], [0, 0], [1, 1]),
        // 3x3 pad 1, odd sizes.
        geometry(
            shape(2, [3, 10], [11, 13], [3, 3], 1),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
        // 3x3 stride 2, groups 2, channels not multiples of 8.
        geometry(
            shape(1, [6, 10], [15, 14], [3, 3], 2),
            [2, 2],
            [1, 1],
            [1, 1],
        ),
        // 7x7 stride 2 pad 3 (ResNet stem).
        geometry(
            shape(1, [3, 16], [23, 29], [7, 7], 1),
            [2, 2],
            [3, 3],
            [1, 1],
        ),
        // Dilation 2.
        geometry(
            shape(1, [4, 6], [12, 12], [3, 3], 1),
            [1, 1],
            [2, 2],
            [2, 2],
        ),
        // Rectangular kernel, mixed stride and padding, more padding than kernel reach.
        geometry(shape(2, [5, 3], [8, 10], [3, 5], 1), [2, 1], [3, 2], [1, 2]),
        // 1x1 with padding.
        geometry(shape(1, [4, 4], [5, 5], [1, 1], 1), [1, 1], [1, 1], [1, 1]),
    ];
    for s in cases {
        check_im2col(s, &pools);
    }
}

/// The plans a pool of several threads makes besides plain pixel tiles: small maps whose
/// im2col matrix is built whole and shared (with batches and groups), uneven pixel and
/// channel splits, and stride-2 gathers over widths that leave every tail length.
#[test]
fn im2col_conv_on_small_maps_and_uneven_splits() {
    let pools = [2, 3].map(|t| ThreadPool::new(t).unwrap());
    let cases = [
        // 7x7 map, 40 -> 37 channels: too few pixels for every thread.
        geometry(
            shape(1, [40, 37], [7, 7], [3, 3], 1),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
        // Two images, stride 2, an odd map.
        geometry(
            shape(2, [24, 50], [13, 11], [3, 3], 1),
            [2, 2],
            [1, 1],
            [1, 1],
        ),
        // Groups over a shared matrix.
        geometry(
            shape(1, [32, 48], [9, 9], [3, 3], 2),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
        // 510 pixels over an uneven number of tiles.
        geometry(
            shape(1, [8, 20], [30, 17], [3, 3], 1),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
        // Stride-2 stem-like taps: output widths 23 and 4..=9 over the rows.
        geometry(
            shape(1, [3, 16], [37, 45], [7, 7], 1),
            [2, 2],
            [3, 3],
            [1, 1],
        ),
        geometry(
            shape(1, [5, 40], [19, 17], [3, 3], 1),
            [2, 2],
            [0, 0],
            [1, 1],
        ),
        // 1x1 stride 2 (downsample) on a 7x7 output.
        geometry(
            shape(1, [96, 64], [13, 13], [1, 1], 1),
            [2, 2],
            [0, 0],
            [1, 1],
        ),
    ];
    // With AVX-512 the 7x7 map's 3x3 runs as Winograd (its own test covers it).
    isa::with_avx2_only(|| {
        for s in cases {
            check_im2col(s, &pools);
        }
    });
}

/// Neither im2col nor Winograd needs scratch in proportion to the image: both work on
/// bounded tiles, and both refuse a scratch buffer one float too short.
#[test]
fn conv_scratch_stays_bounded_for_large_images() {
    let pools = pools();
    let s = geometry(
        shape(1, [64, 24], [56, 56], [3, 3], 1),
        [1, 1],
        [1, 1],
        [1, 1],
    );
    check_conv(s, &pools, ConvStrategy::Winograd);
    let full_im2col = 64 * 9 * 56 * 56;
    // Winograd's tiles hold 36 transformed values per input channel and 4x4 pixels (16 per
    // 2x2 on smaller maps: at most 4 per pixel where im2col holds 9), plus the products, so
    // its bound is looser.
    for (strategy, bound) in [(ConvStrategy::Im2col, 8), (ConvStrategy::Winograd, 4)] {
        check_conv_with(s, &pools, strategy, Some(strategy));
        let conv = Conv2d::with_strategy(s, &random(24 * 64 * 9, 3), 1, strategy).unwrap();
        let scratch = conv.scratch_len(1);
        assert!(
            scratch > 0 && scratch * bound <= full_im2col,
            "{strategy:?}: scratch {scratch} vs full {full_im2col}"
        );
        let mut out = vec![0.0; conv.output_len()];
        let mut small = vec![0.0; scratch - 1];
        let pool = ThreadPool::new(1).unwrap();
        assert!(matches!(
            conv.run(
                &pool,
                &random(conv.input_len(), 4),
                &mut out,
                &mut small,
                Epilogue::NONE
            ),
            Err(KernelError::BufferTooSmall {
                what: "conv scratch",
                ..
            })
        ));
    }
}

/// Winograd against the direct reference: odd output sizes (last tile rows and columns of
/// one to three pixels), paddings 0 to 2, batches, channel counts that are not multiples of
/// 8 (or 32), tile rows that are not whole vectors of tiles, and plans split into bands and
/// channel blocks over 1 to 3 threads, with the epilogue seeing every output element once,
/// on each build. Maps of at least 14 pixels a side run F(4x4, 3x3), the rest F(2x2, 3x3).
/// Shapes it does not suit are refused when forced and planned otherwise.
#[test]
fn winograd_conv_matches_the_reference() {
    let pools = [1, 2, 3].map(|t| ThreadPool::new(t).unwrap());
    let cases = [
        geometry(
            shape(1, [16, 16], [14, 14], [3, 3], 1),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
        geometry(
            shape(2, [20, 36], [15, 17], [3, 3], 1),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
        geometry(
            shape(1, [24, 40], [16, 16], [3, 3], 1),
            [1, 1],
            [0, 0],
            [1, 1],
        ),
        geometry(
            shape(1, [17, 24], [13, 13], [3, 3], 1),
            [1, 1],
            [2, 2],
            [1, 1],
        ),
        geometry(
            shape(3, [32, 96], [20, 20], [3, 3], 1),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
        geometry(
            shape(1, [64, 64], [56, 56], [3, 3], 1),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
        // Larger odd maps: partial last tiles with paddings 0 and 2, two images.
        geometry(
            shape(2, [20, 36], [29, 31], [3, 3], 1),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
        geometry(
            shape(1, [17, 24], [30, 30], [3, 3], 1),
            [1, 1],
            [0, 0],
            [1, 1],
        ),
        geometry(
            shape(1, [16, 40], [27, 27], [3, 3], 1),
            [1, 1],
            [2, 2],
            [1, 1],
        ),
        // Several 32-channel blocks per task for the AVX-512 build's products, the last
        // partial, on ResNet's 14x14 map.
        geometry(
            shape(1, [80, 144], [14, 14], [3, 3], 1),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
        // Transformed weights large enough to be packed on several threads, whole blocks
        // each, the last partial.
        geometry(
            shape(1, [136, 130], [14, 14], [3, 3], 1),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
        // A long narrow map: F(2x2, 3x3) on the AVX2 build too.
        geometry(
            shape(1, [24, 40], [9, 30], [3, 3], 1),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
    ];
    for_each_build(|| {
        for s in cases {
            check_conv_with(
                s,
                &pools,
                ConvStrategy::Winograd,
                Some(ConvStrategy::Winograd),
            );
        }
    });
    // Which of them `Conv2d::new` computes this way: few output channels on a small map run
    // channels-last instead (at most 32 below 28x28).
    for (s, winograd) in cases.iter().zip([
        false, true, true, false, true, true, true, true, true, true, true, true,
    ]) {
        let chosen = ConvStrategy::of(s).unwrap();
        let want = if winograd {
            ConvStrategy::Winograd
        } else {
            ConvStrategy::ChannelsLast
        };
        assert_eq!(chosen, want, "{s:?}");
    }
    let weight = random(16 * 16 * 9, 5);
    let unsuited = [
        geometry(
            shape(1, [16, 16], [30, 30], [3, 3], 1),
            [2, 2],
            [1, 1],
            [1, 1],
        ),
        geometry(
            shape(1, [16, 16], [30, 30], [3, 3], 1),
            [1, 1],
            [2, 2],
            [2, 2],
        ),
        geometry(
            shape(1, [16, 16], [9, 9], [3, 3], 1),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
    ];
    isa::with_avx2_only(|| {
        for s in unsuited {
            assert!(Conv2d::with_strategy(s, &weight, 1, ConvStrategy::Winograd).is_err());
            assert_eq!(
                Conv2d::new(s, &weight, 1).unwrap().strategy(),
                ConvStrategy::ChannelsLast
            );
        }
    });
    // Maps down to 7x7 suit the AVX-512 build, whose products fit them, where there are
    // enough output channels for it to pay.
    if isa::wide_available() {
        assert!(Conv2d::with_strategy(unsuited[2], &weight, 1, ConvStrategy::Winograd).is_ok());
        let small = geometry(
            shape(2, [40, 80], [7, 7], [3, 3], 1),
            [1, 1],
            [1, 1],
            [1, 1],
        );
        check_conv(small, &pools, ConvStrategy::Winograd);
        check_activation_epilogue(small, &pools);
    }
}

#[test]
fn depthwise_conv_matches_reference() {
    let pools = pools();
    // NCHW outputs of at most 14x14 pixels (all but the 9x45 and 8x37 inputs) run eight
    // channels per task where the CPU has AVX2: 12, 20, 9 and 6 channels leave partial
    // groups, 10x11 and 8x8 outputs partial groups of pixels.
    let cases = [
        geometry(
            shape(2, [12, 12], [10, 11], [3, 3], 12),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
        // ConvNeXt: 7x7 pad 3.
        geometry(
            shape(1, [20, 20], [14, 13], [7, 7], 20),
            [1, 1],
            [3, 3],
            [1, 1],
        ),
        // Rows wider than one 32-output block (and not a multiple of it), and
        // more than 32 channels for the NHWC channel blocks.
        geometry(
            shape(1, [40, 40], [9, 45], [7, 7], 40),
            [1, 1],
            [3, 3],
            [1, 1],
        ),
        // Vertical stride 2 with horizontal stride 1 and dilation, wide rows.
        geometry(shape(2, [6, 6], [8, 37], [3, 3], 6), [2, 1], [2, 2], [2, 2]),
        // Stride 2 (MobileNet/EfficientNet), dilation, and channel multiplier 2.
        geometry(
            shape(1, [9, 9], [15, 16], [5, 5], 9),
            [2, 2],
            [2, 2],
            [1, 1],
        ),
        geometry(
            shape(1, [6, 6], [12, 12], [3, 3], 6),
            [1, 1],
            [2, 2],
            [2, 2],
        ),
        geometry(shape(2, [5, 10], [7, 9], [3, 3], 5), [1, 2], [1, 1], [1, 1]),
    ];
    for s in cases {
        check_conv(s, &pools, ConvStrategy::Depthwise);
    }
}

/// The direct depthwise kernel with a bias, per plane and in pixel bands, against the f64
/// reference: odd widths (partial vectors), 1x1 and 1-row maps, maps taller than one chunk
/// of padded rows, channel counts that are not a multiple of 8, strides 2 and 3 with odd
/// and even padding, dilation and a channel multiplier. Pixel-band tiles must hold every
/// channel of whole output rows of one image.
#[test]
fn depthwise_bias_and_pixel_bands_match_reference() {
    let pools = [1, 2, 3].map(|t| ThreadPool::new(t).unwrap());
    let cases = [
        // ConvNeXt's late stages: 7x7 pad 3 on 7x7 and 14x14 maps.
        geometry(
            shape(1, [13, 13], [7, 7], [7, 7], 13),
            [1, 1],
            [3, 3],
            [1, 1],
        ),
        geometry(
            shape(2, [9, 9], [14, 14], [7, 7], 9),
            [1, 1],
            [3, 3],
            [1, 1],
        ),
        // A 1x1 map and a single row.
        geometry(shape(1, [5, 5], [1, 1], [7, 7], 5), [1, 1], [3, 3], [1, 1]),
        geometry(shape(1, [3, 3], [1, 29], [3, 3], 3), [1, 1], [1, 1], [1, 1]),
        // Rows of 4 vectors plus a partial one.
        geometry(
            shape(1, [3, 3], [37, 41], [5, 5], 3),
            [1, 1],
            [2, 2],
            [1, 1],
        ),
        // Taller than a chunk of padded rows (wide rows leave a chunk fewer of them), at
        // stride 1 and 2.
        geometry(
            shape(1, [2, 2], [90, 121], [7, 7], 2),
            [1, 1],
            [3, 3],
            [1, 1],
        ),
        geometry(
            shape(1, [2, 2], [131, 203], [3, 3], 2),
            [2, 2],
            [1, 1],
            [1, 1],
        ),
        // Stride 2 with odd (3x3 pad 1) and even (5x5 pad 2) padding, odd widths.
        geometry(
            shape(2, [6, 6], [17, 23], [3, 3], 6),
            [2, 2],
            [1, 1],
            [1, 1],
        ),
        geometry(
            shape(1, [7, 7], [15, 30], [5, 5], 7),
            [2, 2],
            [2, 2],
            [1, 1],
        ),
        // Maps past the eight-channel kernel's 14x14, where the AVX2 build computes pairs
        // of vectors in column tiles (3x3, 5x5 and 7x7 at stride 1, 3x3 and 5x5 at stride
        // 2; the odd last vector of a row in a column tile of its own), and chunks of rows
        // leave tiles of every height up to the most.
        geometry(
            shape(1, [3, 3], [33, 35], [3, 3], 3),
            [1, 1],
            [1, 1],
            [1, 1],
        ),
        geometry(
            shape(2, [5, 5], [45, 50], [3, 3], 5),
            [2, 2],
            [1, 1],
            [1, 1],
        ),
        geometry(
            shape(1, [4, 4], [41, 47], [5, 5], 4),
            [2, 2],
            [2, 2],
            [1, 1],
        ),
        geometry(
            shape(1, [3, 3], [29, 31], [7, 7], 3),
            [1, 1],
            [3, 3],
            [1, 1],
        ),
        // Stride 3, dilation, no padding; a channel multiplier of 2.
        geometry(
            shape(1, [4, 4], [19, 20], [3, 3], 4),
            [3, 3],
            [0, 0],
            [2, 2],
        ),
        geometry(
            shape(1, [3, 6], [11, 12], [3, 3], 3),
            [1, 2],
            [1, 1],
            [1, 1],
        ),
    ];
    for s in cases {
        let [h, w] = s.in_size;
        let input = random(s.batch * s.in_channels * h * w, 41);
        let weight = random(s.out_channels * s.kernel[0] * s.kernel[1], 42);
        let bias = random(s.out_channels, 43);
        let (want, scale, [oh, ow]) = reference_conv(&s, &input, &weight);
        let plane = oh * ow;
        // The counting epilogue doubles and adds one after the bias.
        let want: Vec<f64> = (want.iter().enumerate())
            .map(|(e, v)| 2.0 * (v + bias[(e / plane) % s.out_channels] as f64) + 1.0)
            .collect();
        let scale: Vec<f64> = scale.iter().map(|v| 2.0 * v + 2.0).collect();
        for bands in [false, true] {
            let mut conv = DepthwiseConv2d::new(s, &weight)
                .and_then(|c| c.with_bias(&bias))
                .unwrap();
            if bands {
                conv = conv.with_pixel_bands();
            }
            assert_eq!(conv.pixel_bands(), bands);
            assert_eq!(conv.out_size(), [oh, ow]);
            for pool in &pools {
                let what = format!("{s:?}, bands {bands}, {} threads", pool.threads());
                let counter = CountingEpilogue::new(s.batch * s.out_channels, plane);
                let whole_pixels = AtomicU32::new(1);
                let visit = |t: Tile<'_>| {
                    let pixels = t.row0() % s.out_channels == 0
                        && t.rows() == s.out_channels
                        && t.col0() % ow == 0
                        && t.cols() % ow == 0;
                    if bands && !pixels {
                        whole_pixels.store(0, Ordering::Relaxed);
                    }
                    counter.visit(t)
                };
                let mut out = vec![f32::NAN; conv.output_len()];
                let mut scratch = vec![f32::NAN; conv.scratch_len(pool.threads())];
                conv.run(
                    pool,
                    &input,
                    &mut out,
                    &mut scratch,
                    Epilogue::from_closure(&visit),
                )
                .unwrap();
                counter.assert_each_once(&what);
                assert_eq!(whole_pixels.load(Ordering::Relaxed), 1, "{what}: tiles");
                assert_close(&out, &want, &scale, &what);
            }
        }
    }
}

#[test]
fn conv1d_is_conv2d_over_one_row() {
    let pools = pools();
    let s1 = Conv1dShape {
        batch: 2,
        in_channels: 6,
        out_channels: 8,
        length: 37,
        kernel: 5,
        stride: 2,
        padding: 2,
        dilation: 1,
        groups: 2,
        layout: Layout::Nchw,
    };
    let s2 = s1.to_2d();
    assert_eq!((s2.in_size, s2.kernel), ([1, 37], [1, 5]));
    check_conv(s2, &pools, ConvStrategy::Im2col);
    let weight = random(8 * 3 * 5, 9);
    let conv = Conv2d::new_1d(s1, &weight, 1).unwrap();
    assert_eq!(conv.out_size(), [1, 19]);
}

#[test]
fn conv_rejects_bad_shapes() {
    let bad_groups = geometry(shape(1, [6, 4], [8, 8], [3, 3], 4), [1, 1], [1, 1], [1, 1]);
    assert!(matches!(
        Conv2d::new(bad_groups, &[0.0; 1000], 1),
        Err(KernelError::Shape(_))
    ));
    let empty_input = shape(1, [1, 1], [0, 4], [1, 1], 1);
    assert!(matches!(
        Conv2d::new(geometry(empty_input, [1, 1], [1, 1], [1, 1]), &[0.0; 1], 1),
        Err(KernelError::Shape(_))
    ));
    let too_big_kernel = shape(1, [1, 1], [2, 2], [5, 5], 1);
    assert!(matches!(
        Conv2d::new(too_big_kernel, &[0.0; 25], 1),
        Err(KernelError::Shape(_))
    ));
    let ok = geometry(shape(1, [2, 2], [4, 4], [3, 3], 1), [1, 1], [1, 1], [1, 1]);
    assert!(matches!(
        Conv2d::new(ok, &[0.0; 35], 1),
        Err(KernelError::BufferTooSmall {
            what: "conv weight",
            ..
        })
    ));
}
