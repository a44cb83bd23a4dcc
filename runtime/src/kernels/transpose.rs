//! Matrix transposes in 8x8 register blocks: the weight packing that interleaves a linear
//! layer's rows into column panels, the NCHW -> NHWC copy of the channels-last
//! convolutions, and (the register transpose alone) the small-map depthwise kernel's
//! channel lanes.
//!
//! Where the CPU has AVX2, each 8x8 block is eight row loads, the 24 shuffles of the
//! standard unpack / shuffle / lane-permute transpose, and eight row stores, so both sides
//! move whole vectors; the partial blocks at the edges go element by element. The scalar
//! copy it replaced made weight packing most of ConvNeXt-T's compile time and cost the
//! channels-last convolutions a tenth of their time.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use crate::kernels::activation::simd_available;

/// `dst[j * ldd + i] = src[i * lds + j]` for `i < rows`, `j < cols`.
///
/// # Safety
/// `src` is readable at every `i * lds + j` and `dst` writable at every `j * ldd + i` in
/// that range, and the two do not overlap.
pub(crate) unsafe fn transpose(
    src: *const f32,
    lds: isize,
    dst: *mut f32,
    ldd: usize,
    rows: usize,
    cols: usize,
) {
    let (mut whole_rows, mut whole_cols) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if simd_available() {
        (whole_rows, whole_cols) = (rows / 8 * 8, cols / 8 * 8);
        // SAFETY: AVX2 is present; the blocks lie inside the ranges the caller vouched for.
        unsafe { blocks_avx2(src, lds, dst, ldd, whole_rows, whole_cols) };
    }
    for i in 0..rows {
        let skip = if i < whole_rows { whole_cols } else { 0 };
        for j in skip..cols {
            // SAFETY: in range, as the caller vouched.
            unsafe { *dst.add(j * ldd + i) = *src.offset(i as isize * lds + j as isize) };
        }
    }
}

/// [`transpose`] of the whole 8x8 blocks (`rows` and `cols` multiples of 8).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn blocks_avx2(
    src: *const f32,
    lds: isize,
    dst: *mut f32,
    ldd: usize,
    rows: usize,
    cols: usize,
) {
    for j in (0..cols).step_by(8) {
        for i in (0..rows).step_by(8) {
            // SAFETY (loads and stores): rows `i..i + 8` and columns `j..j + 8` are in
            // range.
            let r: [__m256; 8] = std::array::from_fn(|t| unsafe {
                _mm256_loadu_ps(src.offset((i + t) as isize * lds + j as isize))
            });
            for (t, row) in transpose8(r).into_iter().enumerate() {
                unsafe { _mm256_storeu_ps(dst.add((j + t) * ldd + i), row) };
            }
        }
    }
}

/// The transpose of the 8x8 matrix whose rows are `r`: element `j` of row `i` becomes
/// element `i` of row `j`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element lands where the transpose puts it, on sizes with and without partial
    /// blocks either way, with padded leading dimensions and a negative source stride; the
    /// padding of the destination is left alone.
    #[test]
    fn transposes_every_element() {
        for (rows, cols) in [(8, 8), (16, 24), (3, 5), (13, 29), (8, 1), (1, 8), (17, 9)] {
            for reversed in [false, true] {
                let lds = cols + 3;
                let src: Vec<f32> = (0..rows * lds).map(|v| v as f32).collect();
                let ldd = rows + 2;
                let mut dst = vec![f32::NAN; cols * ldd];
                let (start, stride) = if reversed {
                    ((rows - 1) * lds, -(lds as isize))
                } else {
                    (0, lds as isize)
                };
                // SAFETY: the ranges lie inside both buffers.
                unsafe {
                    transpose(
                        src.as_ptr().add(start),
                        stride,
                        dst.as_mut_ptr(),
                        ldd,
                        rows,
                        cols,
                    )
                };
                for j in 0..cols {
                    for i in 0..ldd {
                        let got = dst[j * ldd + i];
                        if i < rows {
                            let row = if reversed { rows - 1 - i } else { i };
                            assert_eq!(got, src[row * lds + j], "{rows}x{cols} at ({i}, {j})");
                        } else {
                            assert!(got.is_nan(), "padding written at ({i}, {j})");
                        }
                    }
                }
            }
        }
    }
}
