//! Transposed 2-D convolutions (`nn.ConvTranspose2d`, NCHW, PyTorch's `[C_in, C_out / groups,
//! kh, kw]` weight) on the calling thread, as a product and a scatter.
//!
//! Each image and group is one product `P = Wᵀ·X` (`[C_out/g·kh·kw, H·W]` from the group's
//! `[C_in/g, C_out/g·kh·kw]` weight and `[C_in/g, H·W]` input, on the `gemm` crate), whose row
//! for output channel `co` and tap `(ky, kx)` then adds into the output at `(iy·s + ky·d − pad,
//! ix·s + kx·d − pad)` for every input pixel `(iy, ix)` that lands inside (col2im). The
//! output starts as the bias. The op table's reference does the same multiply-adds one
//! scalar at a time in f64, some fifty times slower.

use crate::kernels::gemm::{gemm_serial, MatMut, MatRef};
use crate::kernels::{KernelError, Output};

/// The geometry of a transposed convolution over `batch` images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvTranspose2dShape {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    /// Input height and width.
    pub in_hw: [usize; 2],
    /// Output height and width (they include any `output_padding`).
    pub out_hw: [usize; 2],
    pub k: [usize; 2],
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
}

impl ConvTranspose2dShape {
    /// Floats of scratch [`conv_transpose2d`] needs: one group's product.
    pub fn scratch_len(&self) -> usize {
        let groups = self.groups.max(1);
        (self.out_channels / groups) * self.k[0] * self.k[1] * self.in_hw[0] * self.in_hw[1]
    }

    fn check(
        &self,
        x: usize,
        w: usize,
        bias: Option<usize>,
        out: usize,
    ) -> Result<(), KernelError> {
        let s = self;
        let g = s.groups;
        let bad = |what: String| {
            Err(KernelError::Shape(format!(
                "transposed convolution: {what}"
            )))
        };
        if g == 0 || !s.in_channels.is_multiple_of(g) || !s.out_channels.is_multiple_of(g) {
            return bad(format!(
                "{} groups for {} -> {} channels",
                g, s.in_channels, s.out_channels
            ));
        }
        if s.stride.contains(&0) || s.dilation.contains(&0) {
            return bad("a stride or dilation of 0".into());
        }
        let want = [
            (
                "input",
                x,
                s.batch * s.in_channels * s.in_hw[0] * s.in_hw[1],
            ),
            (
                "weight",
                w,
                s.in_channels * (s.out_channels / g) * s.k[0] * s.k[1],
            ),
            (
                "output",
                out,
                s.batch * s.out_channels * s.out_hw[0] * s.out_hw[1],
            ),
        ];
        for (what, got, need) in want {
            if got != need {
                return bad(format!(
                    "the {what} has {got} floats, the shape needs {need}"
                ));
            }
        }
        if let Some(b) = bias.filter(|&b| b != s.out_channels) {
            return bad(format!(
                "a bias of {b} values for {} channels",
                s.out_channels
            ));
        }
        Ok(())
    }
}

/// `out = conv_transpose2d(x, weight) + bias` for `shape`, using `scratch` (at least
/// [`ConvTranspose2dShape::scratch_len`] floats, grown if shorter).
pub fn conv_transpose2d(
    shape: &ConvTranspose2dShape,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) -> Result<(), KernelError> {
    shape.check(x.len(), weight.len(), bias.map(<[f32]>::len), out.len())?;
    let s = shape;
    let (cin_g, cout_g) = (s.in_channels / s.groups, s.out_channels / s.groups);
    let taps = s.k[0] * s.k[1];
    let rows = cout_g * taps;
    let (plane, out_plane) = (s.in_hw[0] * s.in_hw[1], s.out_hw[0] * s.out_hw[1]);
    if scratch.len() < rows * plane {
        scratch.resize(rows * plane, 0.0);
    }
    for (co, dst) in out.chunks_exact_mut(out_plane.max(1)).enumerate() {
        dst.fill(bias.map_or(0.0, |b| b[co % s.out_channels]));
    }
    if plane == 0 || rows == 0 {
        return Ok(());
    }
    // Input and output offsets of each tap along one axis: input `i` lands at `i·s + t·d − pad`.
    let landing = |axis: usize, i: usize, tap: usize| {
        (i * s.stride[axis] + tap * s.dilation[axis])
            .checked_sub(s.pad[axis])
            .filter(|&o| o < s.out_hw[axis])
    };
    for n in 0..s.batch {
        for g in 0..s.groups {
            let w = &weight[g * cin_g * rows..][..cin_g * rows];
            let xg = &x[(n * s.in_channels + g * cin_g) * plane..][..cin_g * plane];
            let a = MatRef::row_major(w, cin_g, rows)?.t();
            let b = MatRef::row_major(xg, cin_g, plane)?;
            let p = &mut scratch[..rows * plane];
            gemm_serial(a, b, MatMut::row_major(p, rows, plane)?, Output::Overwrite)?;
            for co in 0..cout_g {
                let dst =
                    &mut out[(n * s.out_channels + g * cout_g + co) * out_plane..][..out_plane];
                for ky in 0..s.k[0] {
                    for kx in 0..s.k[1] {
                        let row = &p[((co * s.k[0] + ky) * s.k[1] + kx) * plane..][..plane];
                        for iy in 0..s.in_hw[0] {
                            let Some(oy) = landing(0, iy, ky) else {
                                continue;
                            };
                            let src = &row[iy * s.in_hw[1]..][..s.in_hw[1]];
                            let line = &mut dst[oy * s.out_hw[1]..][..s.out_hw[1]];
                            for (ix, &v) in src.iter().enumerate() {
                                if let Some(ox) = landing(1, ix, kx) {
                                    line[ox] += v;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// `len` values drawn from N(0, 1) with `seed`.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| rng.standard_normal() as f32).collect()
    }

    /// The definition, scattering each input element through each tap in f64.
    fn naive(s: &ConvTranspose2dShape, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f64> {
        let (cin_g, cout_g) = (s.in_channels / s.groups, s.out_channels / s.groups);
        let [oh, ow] = s.out_hw;
        let mut out = vec![0f64; s.batch * s.out_channels * oh * ow];
        for n in 0..s.batch {
            for co in 0..s.out_channels {
                let at = (n * s.out_channels + co) * oh * ow;
                let b = bias.map_or(0.0, |b| f64::from(b[co]));
                out[at..at + oh * ow].fill(b);
                let g = co / cout_g;
                for ci in g * cin_g..(g + 1) * cin_g {
                    for ky in 0..s.k[0] {
                        for kx in 0..s.k[1] {
                            let wv = w[((ci * cout_g + co % cout_g) * s.k[0] + ky) * s.k[1] + kx];
                            for iy in 0..s.in_hw[0] {
                                for ix in 0..s.in_hw[1] {
                                    let oy = (iy * s.stride[0] + ky * s.dilation[0]) as isize
                                        - s.pad[0] as isize;
                                    let ox = (ix * s.stride[1] + kx * s.dilation[1]) as isize
                                        - s.pad[1] as isize;
                                    if oy < 0 || ox < 0 || oy >= oh as isize || ox >= ow as isize {
                                        continue;
                                    }
                                    let xv = x[((n * s.in_channels + ci) * s.in_hw[0] + iy)
                                        * s.in_hw[1]
                                        + ix];
                                    out[at + oy as usize * ow + ox as usize] +=
                                        f64::from(wv) * f64::from(xv);
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Strides, padding, dilation, groups, output padding and batches agree with the
    /// definition; a buffer of the wrong size is an error.
    #[test]
    fn matches_the_definition() {
        let shape = |batch, cin, cout, groups, hw: [usize; 2], k, s, p, d, op: [usize; 2]| {
            let out = |a: usize| (hw[a] - 1) * s + d * (k - 1) + op[a] + 1 - 2 * p;
            ConvTranspose2dShape {
                batch,
                in_channels: cin,
                out_channels: cout,
                groups,
                in_hw: hw,
                out_hw: [out(0), out(1)],
                k: [k, k],
                stride: [s, s],
                pad: [p, p],
                dilation: [d, d],
            }
        };
        let cases = [
            shape(1, 8, 4, 1, [5, 7], 4, 2, 1, 1, [0, 0]),
            shape(2, 6, 9, 3, [4, 3], 3, 2, 0, 1, [1, 1]),
            shape(1, 4, 4, 4, [6, 6], 3, 1, 1, 2, [0, 0]),
            shape(1, 3, 5, 1, [1, 1], 2, 3, 0, 1, [2, 0]),
            shape(1, 16, 8, 2, [9, 5], 5, 3, 2, 1, [0, 2]),
        ];
        let mut scratch = Vec::new();
        for (i, s) in cases.iter().enumerate() {
            let x = values(s.batch * s.in_channels * s.in_hw[0] * s.in_hw[1], 1);
            let w = values(
                s.in_channels * s.out_channels / s.groups * s.k[0] * s.k[1],
                2,
            );
            let bias = values(s.out_channels, 3);
            let mut out = vec![f32::NAN; s.batch * s.out_channels * s.out_hw[0] * s.out_hw[1]];
            let b = (i % 2 == 0).then_some(&bias[..]);
            conv_transpose2d(s, &x, &w, b, &mut out, &mut scratch).unwrap();
            for (j, (got, want)) in out.iter().zip(naive(s, &x, &w, b)).enumerate() {
                assert!(
                    (f64::from(*got) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "case {i}, element {j}: {got} against {want}"
                );
            }
        }
        let s = cases[0];
        let mut out = vec![0.0; 3];
        let x = values(s.batch * s.in_channels * s.in_hw[0] * s.in_hw[1], 1);
        let w = values(s.in_channels * s.out_channels * 16, 2);
        assert!(matches!(
            conv_transpose2d(&s, &x, &w, None, &mut out, &mut scratch),
            Err(KernelError::Shape(_))
        ));
    }
}
