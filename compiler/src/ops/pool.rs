//! Spatial ops on the last two axes (H, W) of image tensors: pooling (`max_pool2d`,
//! `avg_pool2d`, `adaptive_avg_pool2d`), resampling (`upsample`) and `pixel_shuffle`.
//! Pools accept [N, C, H, W] or [C, H, W] like PyTorch; every leading axis is a batch of planes.

use super::common::{
    at_least, contiguous, expect_rank, nan_max, nonempty, numel, pair_at_least, window_out_2d, X,
};
use super::{arg, choice, no_flops, no_params, ArgType, Attrs, AttrsExt, Default, OpDef, Shape};
use ndarray::{ArrayD, IxDyn};
use std::ops::Range;

const K: super::ArgSpec = arg("k", ArgType::Pair, Default::Required);
const S: super::ArgSpec = arg("s", ArgType::OptPair, Default::None);
const PAD: super::ArgSpec = arg("pad", ArgType::Pair, Default::Int(0));
const CEIL: super::ArgSpec = arg("ceil_mode", ArgType::Bool, Default::Bool(false));

pub static OPS: &[OpDef] = &[
    OpDef {
        name: "max_pool2d",
        doc: "Max over k×k windows (stride s, default k); padding acts as −inf; NaN propagates.",
        args: &[X, K, S, PAD, CEIL],
        params: no_params,
        shape: |a, s| Pool::new("max_pool2d", a, &s[0]).map(|p| p.out_shape(&s[0])),
        flops: window_flops,
        eval: |a, xs| {
            let p = Pool::new("max_pool2d", a, xs[0].shape()).expect("validated by the shape rule");
            let (rows, cols) = p.bins();
            pool(xs[0], &rows, &cols, |w, _| w.fold(f32::NEG_INFINITY, nan_max))
        },
    },
    OpDef {
        name: "avg_pool2d",
        doc: "Mean over k×k windows (stride s, default k); count_include_pad divides by the padded window size.",
        args: &[X, K, S, PAD, CEIL, arg("count_include_pad", ArgType::Bool, Default::Bool(true))],
        params: no_params,
        shape: |a, s| Pool::new("avg_pool2d", a, &s[0]).map(|p| p.out_shape(&s[0])),
        flops: window_flops,
        eval: |a, xs| {
            let p = Pool::new("avg_pool2d", a, xs[0].shape()).expect("validated by the shape rule");
            let include_pad = a.flag("count_include_pad");
            let (rows, cols) = p.bins();
            pool(xs[0], &rows, &cols, |w, padded| {
                let (sum, n) = w.fold((0f64, 0usize), |(s, n), v| (s + f64::from(v), n + 1));
                (sum / if include_pad { padded } else { n } as f64) as f32
            })
        },
    },
    OpDef {
        name: "adaptive_avg_pool2d",
        doc: "Mean over PyTorch's adaptive bins [floor(i·In/Out), ceil((i+1)·In/Out)) to an output of `size`.",
        args: &[X, arg("size", ArgType::Pair, Default::Required)],
        params: no_params,
        shape: |a, s| {
            let hw = planes("adaptive_avg_pool2d", &s[0])?;
            let size = pair_at_least("adaptive_avg_pool2d", a, "size", 1)?;
            nonempty("adaptive_avg_pool2d", hw)?;
            Ok(with_hw(&s[0], size))
        },
        flops: |_, s, _| numel(&s[0]),
        eval: |a, xs| {
            let x = xs[0].shape();
            let size = a.ints("size");
            let [rows, cols] = [0, 1].map(|i| adaptive_bins(x[x.len() - 2 + i], size[i] as usize));
            pool(xs[0], &rows, &cols, |w, _| {
                let (sum, n) = w.fold((0f64, 0usize), |(s, n), v| (s + f64::from(v), n + 1));
                (sum / n as f64) as f32
            })
        },
    },
    OpDef {
        name: "upsample",
        doc: "Resize NCHW to `size` or by integer `scale` (exactly one): nearest (PyTorch legacy) or bilinear (align_corners).",
        args: &[
            X,
            arg("size", ArgType::OptPair, Default::None),
            arg("scale", ArgType::OptInt, Default::None),
            choice("mode", "nearest", &["nearest", "bilinear"]),
            arg("align_corners", ArgType::Bool, Default::Bool(false)),
        ],
        params: no_params,
        shape: |a, s| Resize::new(a, &s[0]).map(|r| with_hw(&s[0], r.out_hw)),
        // Bilinear: three lerps of 3 FLOPs per output; nearest only copies.
        flops: |a, _, out| if a.str("mode") == "bilinear" { 9 * numel(out) } else { 0 },
        eval: upsample,
    },
    OpDef {
        name: "pixel_shuffle",
        doc: "[…, C·r², H, W] → […, C, H·r, W·r] with out[c, h·r+i, w·r+j] = in[c·r² + i·r + j, h, w].",
        args: &[X, arg("r", ArgType::Int, Default::Required)],
        params: no_params,
        shape: |a, s| {
            expect_rank("pixel_shuffle", &s[0], 3.., "a [..., C, H, W] input")?;
            let r = at_least("pixel_shuffle", "r", a.int("r"), 1)?;
            let [c, h, w] = s[0][s[0].len() - 3..] else { unreachable!() };
            if c % (r * r) != 0 {
                return Err(format!(
                    "pixel_shuffle: {c} channels are not divisible by r²={}",
                    r * r
                ));
            }
            let lead = &s[0][..s[0].len() - 3];
            Ok([lead, &[c / (r * r), h * r, w * r]].concat())
        },
        flops: no_flops,
        eval: pixel_shuffle,
    },
];

/// Checks a [N, C, H, W] or [C, H, W] input; returns (H, W).
fn planes(op: &str, s: &[usize]) -> Result<[usize; 2], String> {
    expect_rank(op, s, 3..=4, "a [N, C, H, W] or [C, H, W] input")?;
    Ok([s[s.len() - 2], s[s.len() - 1]])
}

fn with_hw(s: &[usize], hw: [usize; 2]) -> Shape {
    [&s[..s.len() - 2], &hw[..]].concat()
}

/// One window along an axis: the input indices it reads, and its extent counting padding.
pub(crate) struct Bin {
    pub(crate) range: Range<usize>,
    pub(crate) padded: usize,
}

/// The validated geometry of a sliding-window pool.
pub(crate) struct Pool {
    pub(crate) hw: [usize; 2],
    pub(crate) k: [usize; 2],
    pub(crate) s: [usize; 2],
    pub(crate) pad: [usize; 2],
    pub(crate) out_hw: [usize; 2],
}

impl Pool {
    pub(crate) fn new(op: &str, a: &Attrs, x: &[usize]) -> Result<Pool, String> {
        let hw = planes(op, x)?;
        nonempty(op, hw)?;
        let k = pair_at_least(op, a, "k", 1)?;
        let s = if a.is_none("s") {
            k
        } else {
            pair_at_least(op, a, "s", 1)?
        };
        let pad = pair_at_least(op, a, "pad", 0)?;
        // PyTorch's rule; it also guarantees every window overlaps the input.
        if pad[0] > k[0] / 2 || pad[1] > k[1] / 2 {
            return Err(format!(
                "{op}: pad ({}, {}) must be at most half of the {}x{} kernel",
                pad[0], pad[1], k[0], k[1]
            ));
        }
        let mut out_hw = window_out_2d(op, hw, k, s, pad)?;
        if a.flag("ceil_mode") {
            // PyTorch: round the window count up, but never start a window past the input
            // and its left padding.
            for i in 0..2 {
                let mut o = (hw[i] + 2 * pad[i] - k[i]).div_ceil(s[i]) + 1;
                if (o - 1) * s[i] >= hw[i] + pad[i] {
                    o -= 1;
                }
                out_hw[i] = o;
            }
        }
        Ok(Pool {
            hw,
            k,
            s,
            pad,
            out_hw,
        })
    }

    fn out_shape(&self, x: &[usize]) -> Shape {
        with_hw(x, self.out_hw)
    }

    pub(crate) fn bins(&self) -> (Vec<Bin>, Vec<Bin>) {
        let axis = |i: usize| {
            (0..self.out_hw[i])
                .map(|o| {
                    let start = (o * self.s[i]) as i64 - self.pad[i] as i64;
                    let end = (start + self.k[i] as i64).min((self.hw[i] + self.pad[i]) as i64);
                    let clip = |v: i64| v.clamp(0, self.hw[i] as i64) as usize;
                    Bin {
                        range: clip(start)..clip(end),
                        padded: (end - start) as usize,
                    }
                })
                .collect()
        };
        (axis(0), axis(1))
    }
}

fn window_flops(a: &Attrs, _: &[Shape], out: &Shape) -> u64 {
    let k = a.ints("k");
    numel(out) * (k[0] * k[1]).max(0) as u64
}

pub(crate) fn adaptive_bins(len: usize, out: usize) -> Vec<Bin> {
    (0..out)
        .map(|i| {
            let (start, end) = (i * len / out, ((i + 1) * len).div_ceil(out));
            Bin {
                range: start..end,
                padded: end - start,
            }
        })
        .collect()
}

/// Reduces every (row bin × column bin) window of every H×W plane with `reduce`, which gets
/// the window's values and its padded size.
fn pool(
    x: &ArrayD<f32>,
    rows: &[Bin],
    cols: &[Bin],
    reduce: impl Fn(&mut dyn Iterator<Item = f32>, usize) -> f32,
) -> ArrayD<f32> {
    let s = x.shape();
    let (h, w) = (s[s.len() - 2], s[s.len() - 1]);
    let data = contiguous(x);
    let n_planes = s[..s.len() - 2].iter().product::<usize>();
    let mut y = Vec::with_capacity(n_planes * rows.len() * cols.len());
    for p in 0..n_planes {
        let plane = &data[p * h * w..][..h * w];
        for r in rows {
            for c in cols {
                let mut window = r
                    .range
                    .clone()
                    .flat_map(|i| plane[i * w..][c.range.clone()].iter().copied());
                y.push(reduce(&mut window, r.padded * c.padded));
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(&with_hw(s, [rows.len(), cols.len()])), y).expect("sizes agree")
}

/// The validated geometry of an `upsample`.
pub(crate) struct Resize {
    pub(crate) hw: [usize; 2],
    pub(crate) out_hw: [usize; 2],
    scale: Option<usize>,
    pub(crate) bilinear: bool,
    align_corners: bool,
}

impl Resize {
    pub(crate) fn new(a: &Attrs, x: &[usize]) -> Result<Resize, String> {
        const OP: &str = "upsample";
        expect_rank(OP, x, 4..=4, "a 4-D NCHW input")?;
        let hw = [x[2], x[3]];
        nonempty(OP, hw)?;
        let (scale, out_hw) = match (a.is_none("size"), a.is_none("scale")) {
            (false, true) => (None, pair_at_least(OP, a, "size", 1)?),
            (true, false) => {
                let f = at_least(OP, "scale", a.int("scale"), 1)?;
                (Some(f), hw.map(|v| v * f))
            }
            _ => return Err(format!("{OP}: give exactly one of size and scale")),
        };
        let bilinear = a.str("mode") == "bilinear";
        let align_corners = a.flag("align_corners");
        if align_corners && !bilinear {
            return Err(format!(
                "{OP}: align_corners applies only to mode=\"bilinear\""
            ));
        }
        Ok(Resize {
            hw,
            out_hw,
            scale,
            bilinear,
            align_corners,
        })
    }

    /// PyTorch's `compute_scales_value`: 1/scale when a scale factor was given, else in/out (f32).
    fn ratio(&self, i: usize) -> f32 {
        match self.scale {
            Some(f) => (1.0 / f as f64) as f32,
            None => self.hw[i] as f32 / self.out_hw[i] as f32,
        }
    }

    /// PyTorch's `nearest_idx`.
    pub(crate) fn nearest(&self, i: usize) -> Vec<usize> {
        let (len, out) = (self.hw[i], self.out_hw[i]);
        let ratio = self.ratio(i);
        (0..out)
            .map(|o| match () {
                _ if out == len => o,
                _ if out == 2 * len => o >> 1,
                _ => ((o as f32 * ratio).floor() as usize).min(len - 1),
            })
            .collect()
    }

    /// PyTorch's `compute_source_index_and_lambda`, in f32: (i0, i1, λ0, λ1) per output index.
    pub(crate) fn linear(&self, i: usize) -> Vec<(usize, usize, f32, f32)> {
        let (len, out) = (self.hw[i], self.out_hw[i]);
        let ratio = match (self.align_corners, out > 1) {
            (true, true) => (len - 1) as f32 / (out - 1) as f32,
            (true, false) => 0.0,
            (false, _) => self.ratio(i),
        };
        (0..out)
            .map(|o| {
                if out == len {
                    return (o, o, 1.0, 0.0);
                }
                let src = if self.align_corners {
                    ratio * o as f32
                } else {
                    // Half-pixel centres, clamped at 0 (linear modes only).
                    (ratio * (o as f32 + 0.5) - 0.5).max(0.0)
                };
                let i0 = (src.floor() as usize).min(len - 1);
                let l1 = (src - i0 as f32).clamp(0.0, 1.0);
                let i1 = i0 + usize::from(i0 < len - 1);
                (i0, i1, 1.0 - l1, l1)
            })
            .collect()
    }
}

fn upsample(a: &Attrs, xs: &[&ArrayD<f32>]) -> ArrayD<f32> {
    let r = Resize::new(a, xs[0].shape()).expect("validated by the shape rule");
    let x = contiguous(xs[0]);
    let ([h, w], [oh, ow]) = (r.hw, r.out_hw);
    let mut y = Vec::with_capacity(x.len() / (h * w) * oh * ow);
    if r.bilinear {
        let (rows, cols) = (r.linear(0), r.linear(1));
        for plane in x.chunks_exact(h * w) {
            for &(h0, h1, a0, a1) in &rows {
                let (top, bottom) = (&plane[h0 * w..][..w], &plane[h1 * w..][..w]);
                for &(w0, w1, b0, b1) in &cols {
                    // The operation order of PyTorch's separable CPU kernel.
                    let t0 = top[w0] * b0 + top[w1] * b1;
                    let t1 = bottom[w0] * b0 + bottom[w1] * b1;
                    y.push(t0 * a0 + t1 * a1);
                }
            }
        }
    } else {
        let (rows, cols) = (r.nearest(0), r.nearest(1));
        for plane in x.chunks_exact(h * w) {
            for &i in &rows {
                y.extend(cols.iter().map(|&j| plane[i * w + j]));
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(&with_hw(xs[0].shape(), r.out_hw)), y).expect("sizes agree")
}

fn pixel_shuffle(a: &Attrs, xs: &[&ArrayD<f32>]) -> ArrayD<f32> {
    let s = xs[0].shape();
    let r = a.int("r") as usize;
    let [c, h, w] = s[s.len() - 3..] else {
        unreachable!()
    };
    let lead: usize = s[..s.len() - 3].iter().product();
    let split = ArrayD::from_shape_vec(
        IxDyn(&[lead, c / (r * r), r, r, h, w]),
        contiguous(xs[0]).into_owned(),
    )
    .expect("sizes agree");
    // [B, C, i, j, H, W] → [B, C, H, i, W, j]
    let shuffled = split.permuted_axes(IxDyn(&[0, 1, 4, 2, 5, 3]));
    let out = [&s[..s.len() - 3], &[c / (r * r), h * r, w * r]].concat();
    let data: Vec<f32> = shuffled.iter().copied().collect();
    ArrayD::from_shape_vec(IxDyn(&out), data).expect("sizes agree")
}

#[cfg(test)]
mod tests {
    use super::super::common::testing::*;
    use super::super::Attr;

    #[test]
    fn max_pool_by_hand() {
        let x = iota(&[1, 1, 4, 4]);
        let y = run("max_pool2d", &[("k", Attr::Int(2))], &[&x], &[]);
        assert_close(&y, &[5.0, 7.0, 13.0, 15.0], 0.0);
        // k=3, s=2, pad=1: padding never wins even against negative values.
        let neg = x.mapv(|v| -v);
        let set = [
            ("k", Attr::Int(3)),
            ("s", Attr::Int(2)),
            ("pad", Attr::Int(1)),
        ];
        let y = run("max_pool2d", &set, &[&neg], &[]);
        assert_close(&y, &[0.0, -1.0, -4.0, -5.0], 0.0);
        let mut nan = x.clone();
        nan[[0, 0, 0, 0]] = f32::NAN;
        let y = run("max_pool2d", &[("k", Attr::Int(2))], &[&nan], &[]);
        assert_close(&y, &[f32::NAN, 7.0, 13.0, 15.0], 0.0);
    }

    #[test]
    fn avg_pool_with_and_without_pad_counting() {
        let x = iota(&[1, 3, 3]); // rank 3 is accepted
        let set = |inc| {
            [
                ("k", Attr::Int(2)),
                ("s", Attr::Int(2)),
                ("pad", Attr::Int(1)),
                ("count_include_pad", Attr::Bool(inc)),
            ]
        };
        let y = run("avg_pool2d", &set(true), &[&x], &[]);
        assert_eq!(y.shape(), &[1, 2, 2]);
        // Windows: {0}, {1,2}, {3,6}, {4,5,7,8}, each divided by 4.
        assert_close(&y, &[0.0, 0.75, 2.25, 6.0], 0.0);
        let y = run("avg_pool2d", &set(false), &[&x], &[]);
        assert_close(&y, &[0.0, 1.5, 4.5, 6.0], 0.0);
        let y = run(
            "avg_pool2d",
            &[("k", Attr::Int(3)), ("s", Attr::Int(1))],
            &[&x],
            &[],
        );
        assert_close(&y, &[4.0], 0.0);
    }

    #[test]
    fn ceil_mode_keeps_the_partial_last_window() {
        // 5x5 with k=2, s=2: floor gives 2x2, ceil_mode 3x3 whose last windows hold one
        // row/column (PyTorch divides those by the clipped size when padding is 0).
        let x = iota(&[1, 1, 5, 5]);
        let set = |ceil| [("k", Attr::Int(2)), ("ceil_mode", Attr::Bool(ceil))];
        assert_eq!(
            run("avg_pool2d", &set(false), &[&x], &[]).shape(),
            &[1, 1, 2, 2]
        );
        let y = run("avg_pool2d", &set(true), &[&x], &[]);
        assert_eq!(y.shape(), &[1, 1, 3, 3]);
        assert_close(
            &y,
            &[3.0, 5.0, 6.5, 13.0, 15.0, 16.5, 20.5, 22.5, 24.0],
            0.0,
        );
        let y = run("max_pool2d", &set(true), &[&x], &[]);
        assert_close(
            &y,
            &[6.0, 8.0, 9.0, 16.0, 18.0, 19.0, 21.0, 23.0, 24.0],
            0.0,
        );
        // A window may not start in the right padding: 4 with k=2, s=2, pad=1 gives 3, not 4.
        let x = iota(&[1, 1, 4, 4]);
        let set = [
            ("k", Attr::Int(2)),
            ("pad", Attr::Int(1)),
            ("ceil_mode", Attr::Bool(true)),
        ];
        assert_eq!(run("max_pool2d", &set, &[&x], &[]).shape(), &[1, 1, 3, 3]);
    }

    #[test]
    fn pool_shape_rules() {
        assert_eq!(
            shape_of(
                "max_pool2d",
                &[
                    ("k", Attr::Int(3)),
                    ("s", Attr::Int(2)),
                    ("pad", Attr::Int(1))
                ],
                &[&[1, 2, 7, 8]]
            ),
            Ok(vec![1, 2, 4, 4])
        );
        assert_eq!(
            shape_err(
                "max_pool2d",
                &[("k", Attr::Int(3)), ("pad", Attr::Int(2))],
                &[&[1, 1, 8, 8]]
            ),
            "max_pool2d: pad (2, 2) must be at most half of the 3x3 kernel"
        );
        assert_eq!(
            shape_err("avg_pool2d", &[("k", Attr::Int(3))], &[&[1, 1, 2, 5]]),
            "avg_pool2d: padded input 2x5 is smaller than the 3x3 kernel"
        );
        assert!(shape_err("max_pool2d", &[("k", Attr::Int(2))], &[&[4, 4]]).contains("got rank 2"));
        assert_eq!(
            flops_of("max_pool2d", &[("k", Attr::Int(2))], &[&[1, 1, 4, 4]]),
            16
        );
    }

    #[test]
    fn adaptive_avg_pool_bins() {
        // In=5, Out=3: bins [0,2), [1,4), [3,5) along W; H 1 → 2 replicates.
        let x = tensor(&[1, 1, 1, 5], &[1.0, 2.0, 3.0, 4.0, 5.0]);
        let y = run(
            "adaptive_avg_pool2d",
            &[("size", ints(&[2, 3]))],
            &[&x],
            &[],
        );
        assert_close(&y, &[1.5, 3.0, 4.5, 1.5, 3.0, 4.5], 0.0);
        let y = run(
            "adaptive_avg_pool2d",
            &[("size", Attr::Int(1))],
            &[&iota(&[2, 1, 2, 2])],
            &[],
        );
        assert_close(&y, &[1.5, 5.5], 0.0);
        assert!(shape_err(
            "adaptive_avg_pool2d",
            &[("size", Attr::Int(0))],
            &[&[1, 1, 2, 2]]
        )
        .contains("at least 1"));
    }

    #[test]
    fn upsample_nearest() {
        let x = tensor(&[1, 1, 2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let y = run("upsample", &[("scale", Attr::Int(2))], &[&x], &[]);
        assert_eq!(y.shape(), &[1, 1, 4, 6]);
        assert_close(
            &y.slice(ndarray::s![0, 0, 1, ..]).to_owned().into_dyn(),
            &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0],
            0.0,
        );
        // size 2x3 → 3x2: rows floor(i·2/3) = 0,0,1; cols floor(j·3/2) = 0,1.
        let y = run("upsample", &[("size", ints(&[3, 2]))], &[&x], &[]);
        assert_close(&y, &[1.0, 2.0, 1.0, 2.0, 4.0, 5.0], 0.0);
    }

    /// Independent bilinear reference straight from the formula, in f64.
    fn bilinear_ref(
        x: &[f32],
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
        align: bool,
    ) -> Vec<f32> {
        let src = |o: usize, inn: usize, out: usize| -> f64 {
            if align {
                if out > 1 {
                    o as f64 * (inn - 1) as f64 / (out - 1) as f64
                } else {
                    0.0
                }
            } else {
                ((o as f64 + 0.5) * inn as f64 / out as f64 - 0.5).max(0.0)
            }
        };
        let mut y = Vec::new();
        for i in 0..oh {
            for j in 0..ow {
                let (sy, sx) = (src(i, h, oh), src(j, w, ow));
                let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
                let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
                let (ly, lx) = (sy - y0 as f64, sx - x0 as f64);
                let at = |r: usize, c: usize| f64::from(x[r * w + c]);
                let v = (1.0 - ly) * ((1.0 - lx) * at(y0, x0) + lx * at(y0, x1))
                    + ly * ((1.0 - lx) * at(y1, x0) + lx * at(y1, x1));
                y.push(v as f32);
            }
        }
        y
    }

    #[test]
    fn upsample_bilinear_both_corner_modes() {
        let x = tensor(&[1, 1, 2, 2], &[0.0, 1.0, 2.0, 3.0]);
        let bil = |set: &[(&str, Attr)]| {
            let mut v = vec![("mode", Attr::Str("bilinear".into()))];
            v.extend_from_slice(set);
            run("upsample", &v, &[&x], &[])
        };
        // align_corners=false, ×2: sources clamp to 0 at the edge, 0.25 steps inside.
        let y = bil(&[("scale", Attr::Int(2))]);
        #[rustfmt::skip]
        assert_close(&y, &[
            0.0, 0.25, 0.75, 1.0,
            0.5, 0.75, 1.25, 1.5,
            1.5, 1.75, 2.25, 2.5,
            2.0, 2.25, 2.75, 3.0,
        ], 1e-7);
        // align_corners=true to 3x3: exact midpoints.
        let y = bil(&[("size", Attr::Int(3)), ("align_corners", Attr::Bool(true))]);
        assert_close(&y, &[0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0], 1e-7);
        let x = iota(&[1, 1, 3, 5]).mapv(|v| (v * 1.3).sin());
        let data: Vec<f32> = x.iter().copied().collect();
        for (size, align) in [
            ((7, 4), false),
            ((7, 4), true),
            ((2, 9), false),
            ((1, 1), true),
        ] {
            let mut set = vec![
                ("mode", Attr::Str("bilinear".into())),
                ("size", ints(&[size.0, size.1])),
            ];
            set.push(("align_corners", Attr::Bool(align)));
            let y = run("upsample", &set, &[&x], &[]);
            let want = bilinear_ref(&data, (3, 5), (size.0 as usize, size.1 as usize), align);
            assert_close(&y, &want, 1e-6);
        }
    }

    #[test]
    fn upsample_shape_rules() {
        let e = shape_err("upsample", &[], &[&[1, 1, 2, 2]]);
        assert_eq!(e, "upsample: give exactly one of size and scale");
        let both = [("size", Attr::Int(4)), ("scale", Attr::Int(2))];
        assert_eq!(shape_err("upsample", &both, &[&[1, 1, 2, 2]]), e);
        let e = shape_err(
            "upsample",
            &[("scale", Attr::Int(2)), ("align_corners", Attr::Bool(true))],
            &[&[1, 1, 2, 2]],
        );
        assert_eq!(
            e,
            "upsample: align_corners applies only to mode=\"bilinear\""
        );
        assert_eq!(
            shape_of("upsample", &[("scale", Attr::Int(3))], &[&[2, 3, 2, 5]]),
            Ok(vec![2, 3, 6, 15])
        );
    }

    #[test]
    fn pixel_shuffle_by_formula() {
        let (r, c) = (2, 3);
        let x = iota(&[2, c * r * r, 2, 3]);
        let y = run("pixel_shuffle", &[("r", Attr::Int(r as i64))], &[&x], &[]);
        assert_eq!(y.shape(), &[2, c, 4, 6]);
        for (ix, &v) in y.indexed_iter() {
            let (n, ch, hh, ww) = (ix[0], ix[1], ix[2], ix[3]);
            let (h, i, w, j) = (hh / r, hh % r, ww / r, ww % r);
            assert_eq!(v, x[[n, ch * r * r + i * r + j, h, w]]);
        }
        assert_eq!(
            shape_err("pixel_shuffle", &[("r", Attr::Int(2))], &[&[1, 6, 2, 2]]),
            "pixel_shuffle: 6 channels are not divisible by r²=4"
        );
    }
}
