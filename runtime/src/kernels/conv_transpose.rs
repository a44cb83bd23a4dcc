//! Transposed 2-D convolutions (`nn.ConvTranspose2d`, NCHW, PyTorch's `[C_in, C_out / groups,
//! kh, kw]` weight) as products and col2im scatters, split over a thread pool.
//!
//! Output channel `co` of group `g` is the sum over the group's input channels of its
//! weight taps times the input, each tap's product row scattered to `(iy·s + ky·d − pad,
//! ix·s + kx·d − pad)` for every input pixel `(iy, ix)` that lands inside (col2im). A task
//! owns a band of output rows of a block of output channels of one image and group: it
//! computes the block's product rows `P = Wᵀ·X` over the input rows that reach its band
//! (`[channels·kh·kw, rows·W]` from the group's `[C_in/g, C_out/g·kh·kw]` weight and `[C_in/g,
//! rows·W]` input, on the `gemm` crate) into its thread's scratch, zeroes its band and adds
//! into it what lands there. Neighbouring bands recompute the input rows they share (about
//! `(k − s) / s` rows per band), and in exchange no two tasks write the same output element:
//! the scatter needs no synchronisation, and a band is final when its task ends, so the
//! epilogue runs on it then, while it is in cache. The kernel presents its output as the convolutions do (row `b·C_out + co`,
//! column `oy·W_out + ox`), so a bias per channel and an activation come as
//! [`Epilogue::activation`].
//!
//! The weight is read where it is, not packed at load: each product packs its operands
//! (the `gemm` crate does), which costs a `1 / band` share of the product's work, and the
//! weight may then be computed per inference too. The op table's reference does the same
//! multiply-adds one scalar at a time in f64, some fifty times slower than one thread here.

use serde::{Deserialize, Serialize};

use crate::kernels::gemm::{gemm_serial, MatMut, MatRef};
use crate::kernels::SERIAL_FLOPS;
use crate::kernels::{check_len, for_each_task, Epilogue, KernelError, Output, SendPtr};
use crate::pool::ThreadPool;

/// Floats of product a task computes per band (one thread's scratch, 256 KiB): the band is
/// as many input rows as fit, at least one.
const BAND_FLOATS: usize = 64 << 10;
/// Fewest product rows (channels times taps) a task's block gets where the channels allow:
/// shorter products spend their time packing.
const MIN_BLOCK_ROWS: usize = 32;

/// The geometry of a transposed convolution over `batch` images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// How the work is cut: a task is a block of `channels` output channels by a band of
/// `out_rows` output rows, and computes its product `in_rows` input rows at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Split {
    channels: usize,
    out_rows: usize,
    in_rows: usize,
}

impl ConvTranspose2dShape {
    /// Input floats.
    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.in_hw[0] * self.in_hw[1]
    }

    /// Weight floats (`[C_in, C_out / groups, kh, kw]`).
    pub fn weight_len(&self) -> usize {
        self.in_channels * (self.out_channels / self.groups.max(1)) * self.taps()
    }

    /// Output floats.
    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_hw[0] * self.out_hw[1]
    }

    /// Multiply-adds times two.
    pub fn flops(&self) -> usize {
        2 * self.input_len() * (self.out_channels / self.groups.max(1)) * self.taps()
    }

    /// Floats of scratch [`conv_transpose2d`] needs on `threads` threads: one band of
    /// product per thread.
    pub fn scratch_len(&self, threads: usize) -> usize {
        let split = self.split(threads);
        threads.max(1) * split.channels * self.taps() * split.in_rows * self.in_hw[1]
    }

    /// Refuses a shape the kernel cannot run: no groups, channels groups do not divide, a
    /// zero stride or dilation, or an output size other than the geometry's.
    pub fn check(&self) -> Result<(), KernelError> {
        let s = self;
        let bad = |what: String| {
            Err(KernelError::Shape(format!(
                "transposed convolution: {what}"
            )))
        };
        let g = s.groups;
        if g == 0 || !s.in_channels.is_multiple_of(g) || !s.out_channels.is_multiple_of(g) {
            return bad(format!(
                "{g} groups for {} -> {} channels",
                s.in_channels, s.out_channels
            ));
        }
        if s.stride.contains(&0) || s.dilation.contains(&0) {
            return bad("a stride or dilation of 0".into());
        }
        for axis in 0..2 {
            // The last input pixel's last tap, less the padding, and less output padding
            // past it than the stride or the dilation (as PyTorch allows).
            let reach = s.in_hw[axis].saturating_sub(1) * s.stride[axis]
                + s.k[axis].saturating_sub(1) * s.dilation[axis]
                + 1;
            let least = reach.saturating_sub(2 * s.pad[axis]);
            let out = s.out_hw[axis];
            let extra = s.stride[axis].max(s.dilation[axis]);
            if s.in_hw[axis] > 0 && (out < least || out >= least + extra) {
                return bad(format!(
                    "an output of {out} along axis {axis}, where the geometry gives {least}"
                ));
            }
        }
        Ok(())
    }

    fn taps(&self) -> usize {
        self.k[0] * self.k[1]
    }

    /// Channels per block: the group's channels cut into at least two blocks per thread
    /// over all images and groups, but not below [`MIN_BLOCK_ROWS`] product rows. Output rows
    /// per band: all of them, unless the blocks are fewer than two per thread (a decoder's
    /// last layer, to three channels); bands share the input rows between them, which each
    /// computes. Input rows per product: as many as [`BAND_FLOATS`] of product hold.
    fn split(&self, threads: usize) -> Split {
        let cout_g = (self.out_channels / self.groups.max(1)).max(1);
        let taps = self.taps().max(1);
        let wanted = 2 * threads.max(1);
        let entries = (self.batch * self.groups).max(1);
        let channels = cout_g
            .div_ceil(wanted.div_ceil(entries))
            .max(MIN_BLOCK_ROWS.div_ceil(taps))
            .min(cout_g);
        let tasks = entries * cout_g.div_ceil(channels);
        let out_h = self.out_hw[0].max(1);
        let row = (channels * taps * self.in_hw[1]).max(1);
        Split {
            channels,
            out_rows: out_h.div_ceil(wanted.div_ceil(tasks)),
            in_rows: (BAND_FLOATS / row).clamp(1, self.in_hw[0].max(1)),
        }
    }

    /// The input rows that reach output rows `rows` (through some tap).
    fn input_rows_of(&self, rows: std::ops::Range<usize>) -> std::ops::Range<usize> {
        let (s, reach) = (self.stride[0], (self.k[0] - 1) * self.dilation[0]);
        // Input row `iy` lands on `iy·s + ky·d − pad` for `ky` in `0..k`.
        let first = (rows.start + self.pad[0]).saturating_sub(reach).div_ceil(s);
        let end = ((rows.end - 1 + self.pad[0]) / s + 1).min(self.in_hw[0]);
        first.min(end)..end
    }
}

/// `out = conv_transpose2d(x, weight)` for `shape`, then `epilogue` on each finished block
/// of output channels, using `scratch` (at least [`ConvTranspose2dShape::scratch_len`]
/// floats for the pool's threads).
pub fn conv_transpose2d(
    pool: &ThreadPool,
    shape: &ConvTranspose2dShape,
    x: &[f32],
    weight: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
    epilogue: Epilogue<'_>,
) -> Result<(), KernelError> {
    let s = *shape;
    s.check()?;
    check_len("transposed convolution input", s.input_len(), x.len())?;
    check_len(
        "transposed convolution weight",
        s.weight_len(),
        weight.len(),
    )?;
    check_len("transposed convolution output", s.output_len(), out.len())?;
    let threads = pool.threads();
    check_len(
        "transposed convolution scratch",
        s.scratch_len(threads),
        scratch.len(),
    )?;
    if epilogue.residual_in_output() {
        return Err(KernelError::Shape(
            "a transposed convolution cannot store over its shortcut".into(),
        ));
    }
    epilogue.channel_epilogue(s.out_channels, s.output_len())?;
    let (cin_g, cout_g) = (s.in_channels / s.groups, s.out_channels / s.groups);
    let taps = s.taps();
    let rows = cout_g * taps;
    let [in_h, in_w] = s.in_hw;
    let [out_h, out_w] = s.out_hw;
    let (plane, out_plane) = (in_h * in_w, out_h * out_w);
    let split = s.split(threads);
    let per_thread = split.channels * taps * split.in_rows * in_w;
    let blocks = cout_g.div_ceil(split.channels.max(1));
    let bands = out_h.div_ceil(split.out_rows.max(1));
    let tasks = if out_plane == 0 {
        0
    } else {
        s.batch * s.groups * blocks * bands
    };
    let serial = s.flops() < SERIAL_FLOPS;
    let (dst, buffers) = (SendPtr(out.as_mut_ptr()), SendPtr(scratch.as_mut_ptr()));
    let failed = std::sync::Mutex::new(None);
    for_each_task(pool, tasks, serial, |range, thread| {
        for task in range {
            let (entry_block, band) = (task / bands, task % bands);
            let (entry, block) = (entry_block / blocks, entry_block % blocks);
            let (n, g) = (entry / s.groups, entry % s.groups);
            let co0 = block * split.channels;
            let channels = split.channels.min(cout_g - co0);
            let first_row = n * s.out_channels + g * cout_g + co0;
            let out_rows = band * split.out_rows..((band + 1) * split.out_rows).min(out_h);
            // SAFETY: the thread's part of the scratch is its own (checked long enough above).
            let product = unsafe {
                std::slice::from_raw_parts_mut(buffers.get().add(thread * per_thread), per_thread)
            };
            let out_band = |co: usize| {
                // SAFETY: the band's rows of the task's channels of image `n` are its own
                // output elements (checked long enough above).
                unsafe {
                    std::slice::from_raw_parts_mut(
                        dst.get()
                            .add((first_row + co) * out_plane + out_rows.start * out_w),
                        out_rows.len() * out_w,
                    )
                }
            };
            (0..channels).for_each(|co| out_band(co).fill(0.0));
            let w = &weight[g * cin_g * rows..][..cin_g * rows];
            let xg = &x[(n * s.in_channels + g * cin_g) * plane..][..cin_g * plane];
            let reaching = s.input_rows_of(out_rows.clone());
            for iy0 in reaching.clone().step_by(split.in_rows) {
                let in_rows = iy0..(iy0 + split.in_rows).min(reaching.end);
                let columns = in_rows.len() * in_w;
                let p = &mut product[..channels * taps * columns];
                let result = MatRef::row_major(w, cin_g, rows).and_then(|a| {
                    let b = MatRef::row_major(xg, cin_g, plane)?;
                    let a = a.block(0, co0 * taps, cin_g, channels * taps).t();
                    let b = b.block(0, iy0 * in_w, cin_g, columns);
                    let c = MatMut::row_major(p, channels * taps, columns)?;
                    gemm_serial(a, b, c, Output::Overwrite)
                });
                if let Err(e) = result {
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    return;
                }
                for co in 0..channels {
                    let band = out_band(co);
                    // At stride 2 without dilation, taps `kx` and `kx + 1` interleave.
                    let paired = s.stride[1] == 2 && s.dilation[1] == 1;
                    for ky in 0..s.k[0] {
                        let mut kx = 0;
                        while kx < s.k[1] {
                            let taps = if paired && kx + 1 < s.k[1] { 2 } else { 1 };
                            let at = ((co * s.k[0] + ky) * s.k[1] + kx) * columns;
                            let ox0 = (kx * s.dilation[1]) as isize - s.pad[1] as isize;
                            let rows = p[at..][..columns].chunks_exact(in_w);
                            for (r, (iy, src)) in in_rows.clone().zip(rows).enumerate() {
                                // Input row `iy` lands on `iy·s + ky·d − pad` through this tap.
                                let oy =
                                    (iy * s.stride[0] + ky * s.dilation[0]).checked_sub(s.pad[0]);
                                let Some(oy) = oy.filter(|oy| out_rows.contains(oy)) else {
                                    continue;
                                };
                                let line = &mut band[(oy - out_rows.start) * out_w..][..out_w];
                                if taps == 2 {
                                    let next = &p[at + columns + r * in_w..][..in_w];
                                    scatter_pair(src, next, line, ox0);
                                } else {
                                    scatter_row(src, line, s.stride[1], ox0);
                                }
                            }
                            kx += taps;
                        }
                    }
                }
            }
            // SAFETY: the band, finished, is rows `first_row..first_row + channels` by the
            // band's columns of the `[B·C_out, H·W]` output matrix, owned by this task.
            unsafe {
                epilogue.apply(
                    dst.get(),
                    first_row,
                    channels,
                    out_rows.start * out_w,
                    out_rows.len() * out_w,
                    out_plane,
                )
            };
        }
    })?;
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The `i < n` with `0 <= i·stride + offset < len`: the inputs of a row that land inside an
/// output row of `len`.
fn landing(n: usize, len: usize, stride: usize, offset: isize) -> std::ops::Range<usize> {
    let first = if offset < 0 {
        offset.unsigned_abs().div_ceil(stride)
    } else {
        0
    };
    let end = match (len as isize - offset).checked_sub(1) {
        Some(last) if last >= 0 => (last as usize / stride + 1).min(n),
        _ => 0,
    };
    first.min(end)..end
}

/// `line[i·stride + offset] += src[i]` for every `i` that lands inside `line`: one input row's
/// products for one tap, added into the output row they land on. Stride 1 is a plain
/// vectorised add.
fn scatter_row(src: &[f32], line: &mut [f32], stride: usize, offset: isize) {
    let inside = landing(src.len(), line.len(), stride, offset);
    if inside.is_empty() {
        return;
    }
    let at = (inside.start * stride).wrapping_add_signed(offset);
    let (src, line) = (&src[inside], &mut line[at..]);
    if stride == 1 {
        for (d, v) in line.iter_mut().zip(src) {
            *d += v;
        }
    } else {
        for (d, v) in line.iter_mut().step_by(stride).zip(src) {
            *d += v;
        }
    }
}

/// [`scatter_row`] of two neighbouring taps at stride 2: `a` lands on `2i + offset` and `b`
/// on `2i + offset + 1`, so together they cover a run of `line` once, interleaved, which
/// vectorises where one tap at a time is a strided scalar loop. The ends, where only one of
/// the two lands inside, are added one by one.
fn scatter_pair(a: &[f32], b: &[f32], line: &mut [f32], offset: isize) {
    let (ra, rb) = (
        landing(a.len(), line.len(), 2, offset),
        landing(b.len(), line.len(), 2, offset + 1),
    );
    let both = ra.start.max(rb.start)..ra.end.min(rb.end);
    if both.is_empty() {
        scatter_row(a, line, 2, offset);
        scatter_row(b, line, 2, offset + 1);
        return;
    }
    let at = (2 * both.start).wrapping_add_signed(offset);
    let pairs = line[at..].chunks_exact_mut(2);
    for ((d, &x), &y) in pairs.zip(&a[both.clone()]).zip(&b[both.clone()]) {
        d[0] += x;
        d[1] += y;
    }
    for (src, inside, shift) in [(a, ra, offset), (b, rb, offset + 1)] {
        for i in (inside.start..both.start).chain(both.end..inside.end) {
            line[(2 * i).wrapping_add_signed(shift)] += src[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::activation::Activation;
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

    /// Strides, padding, dilation, groups, output padding, batches, several bands and
    /// channel blocks agree with the definition on 1 to 3 threads, with a bias and ReLU or a
    /// residual applied to the finished planes; bad buffers and geometry are errors.
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
            // Several bands of input rows and blocks of channels per image.
            shape(1, 24, 40, 1, [70, 66], 4, 2, 1, 1, [0, 0]),
            shape(2, 12, 20, 2, [40, 9], 2, 2, 0, 1, [1, 0]),
            // Few channels: bands of output rows make the tasks; some rows receive nothing.
            shape(1, 8, 3, 1, [20, 17], 4, 2, 1, 1, [0, 0]),
            // Stride 2, taps paired: an odd kernel, padding past a tap, output padding.
            shape(1, 5, 4, 1, [6, 9], 5, 2, 3, 1, [1, 1]),
            shape(2, 4, 6, 2, [7, 1], 3, 2, 0, 1, [1, 0]),
            shape(1, 4, 2, 1, [9, 6], 1, 3, 0, 1, [2, 2]),
        ];
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            for (i, s) in cases.iter().enumerate() {
                assert!(s.scratch_len(threads) <= threads * (BAND_FLOATS + 66 * 160));
                let mut scratch = vec![f32::NAN; s.scratch_len(threads)];
                let x = values(s.input_len(), 1);
                let w = values(s.weight_len(), 2);
                let bias = values(s.out_channels, 3);
                let residual = values(s.output_len(), 4);
                let mut out = vec![f32::NAN; s.output_len()];
                let (epilogue, b) = match i % 3 {
                    0 => (
                        Epilogue::activation(Activation::Relu, Some(&bias)),
                        Some(&bias[..]),
                    ),
                    1 => (Epilogue::NONE, None),
                    _ => (
                        Epilogue::activation_with_residual(Activation::Identity, None, &residual),
                        None,
                    ),
                };
                conv_transpose2d(&pool, s, &x, &w, &mut out, &mut scratch, epilogue).unwrap();
                let want = naive(s, &x, &w, b);
                for (j, (got, want)) in out.iter().zip(want).enumerate() {
                    let want = match i % 3 {
                        0 => want.max(0.0),
                        1 => want,
                        _ => want + f64::from(residual[j]),
                    };
                    assert!(
                        (f64::from(*got) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{threads} threads, case {i}, element {j}: {got} against {want}"
                    );
                }
            }
        }

        let pool = ThreadPool::new(2).unwrap();
        let s = cases[0];
        let (x, w) = (values(s.input_len(), 1), values(s.weight_len(), 2));
        let mut scratch = vec![0.0; s.scratch_len(2)];
        let mut out = vec![0.0; s.output_len()];
        let mut run = |s: &ConvTranspose2dShape, x: &[f32], w: &[f32], e: Epilogue<'_>| {
            conv_transpose2d(&pool, s, x, w, &mut out, &mut scratch, e)
        };
        let none = Epilogue::NONE;
        assert!(matches!(
            run(&s, &x, &w[1..], none),
            Err(KernelError::BufferTooSmall { .. })
        ));
        let bias = [0.0; 3];
        let short_bias = Epilogue::activation(Activation::Identity, Some(&bias));
        assert!(matches!(
            run(&s, &x, &w, short_bias),
            Err(KernelError::Shape(_))
        ));
        let mut wrong = s;
        wrong.out_hw[1] += 2;
        assert!(matches!(
            run(&wrong, &x, &w, none),
            Err(KernelError::Shape(_))
        ));
        wrong = s;
        wrong.groups = 3;
        assert!(matches!(
            run(&wrong, &x, &w, none),
            Err(KernelError::Shape(_))
        ));
        assert!(run(&s, &x, &w, none).is_ok());
    }
}
