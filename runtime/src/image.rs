//! PNG images as tensors.
//!
//! - [`read_png`] decodes a PNG into a `[1, C, H, W]` f32 tensor with values in [0, 1]:
//!   C = 1 for grey-scale, C = 3 for colour. An alpha channel (grey+alpha, RGBA) is
//!   **dropped**, not composited: a model sees the stored colour values. Palette images are
//!   expanded to RGB. 8-bit samples are divided by 255, 16-bit samples by 65535.
//! - [`write_png`] encodes a `[1, C, H, W]` or `[C, H, W]` tensor with C = 1 (grey) or 3
//!   (RGB) as an 8-bit PNG: each value is clamped to [0, 1], scaled by 255 and rounded to the
//!   nearest integer (halves away from zero); NaN becomes 0. The file is written atomically.
//!
//! Errors are [`IoError::Io`] values naming the file, with an `InvalidData` (undecodable
//! file) or `InvalidInput` (unwritable tensor shape) cause that says what is wrong.

use std::io::{Cursor, ErrorKind};
use std::path::Path;

use image::{ExtendedColorType, ImageEncoder, ImageFormat, ImageReader};

use crate::atomic::write_atomic;
use crate::{IoError, Tensor};

/// Whether `path` ends in `.png` (any case): the CLI's rule for treating a file as an image.
pub fn is_png_path(path: impl AsRef<Path>) -> bool {
    path.as_ref()
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
}

fn invalid(path: &Path, kind: ErrorKind, message: String) -> IoError {
    IoError::io(path, std::io::Error::new(kind, message))
}

/// Reads a PNG file as a `[1, C, H, W]` tensor in [0, 1] (C = 1 grey, 3 colour; alpha dropped).
pub fn read_png(path: impl AsRef<Path>) -> Result<Tensor, IoError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, e))?;
    let img = ImageReader::with_format(Cursor::new(bytes), ImageFormat::Png)
        .decode()
        .map_err(|e| {
            invalid(
                path,
                ErrorKind::InvalidData,
                format!("not a readable PNG: {e}"),
            )
        })?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let grey = !img.color().has_color();
    let sixteen = img.color().bytes_per_pixel() / img.color().channel_count() >= 2;
    // Interleaved samples (HWC) scaled to [0, 1].
    let hwc: Vec<f32> = match (grey, sixteen) {
        (true, false) => scale8(img.to_luma8().into_raw()),
        (false, false) => scale8(img.to_rgb8().into_raw()),
        (true, true) => scale16(img.to_luma16().into_raw()),
        (false, true) => scale16(img.to_rgb16().into_raw()),
    };
    let c = if grey { 1 } else { 3 };
    let mut chw = vec![0f32; hwc.len()];
    for (i, px) in hwc.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            chw[ch * h * w + i] = v;
        }
    }
    Tensor::from_shape_vec(ndarray::IxDyn(&[1, c, h, w]), chw)
        .map_err(|e| invalid(path, ErrorKind::InvalidData, e.to_string()))
}

fn scale8(v: Vec<u8>) -> Vec<f32> {
    v.into_iter().map(|s| f32::from(s) / 255.0).collect()
}

fn scale16(v: Vec<u16>) -> Vec<f32> {
    v.into_iter().map(|s| f32::from(s) / 65535.0).collect()
}

/// The `(C, H, W)` of a tensor [`write_png`] accepts, or why it does not.
pub fn png_layout(shape: &[usize]) -> Result<(usize, usize, usize), String> {
    let (c, h, w) = match shape {
        [1, c, h, w] | [c, h, w] => (*c, *h, *w),
        _ => {
            return Err(format!(
                "a PNG needs a [1, C, H, W] or [C, H, W] tensor, got shape {shape:?}"
            ))
        }
    };
    if c != 1 && c != 3 {
        return Err(format!(
            "a PNG needs C = 1 (grey) or C = 3 (RGB) channels, got {c} (shape {shape:?})"
        ));
    }
    if h == 0 || w == 0 || u32::try_from(h).is_err() || u32::try_from(w).is_err() {
        return Err(format!("cannot store a {h}x{w} image as a PNG"));
    }
    Ok((c, h, w))
}

/// Writes a `[1, C, H, W]` or `[C, H, W]` tensor (C = 1 or 3) as an 8-bit PNG, atomically;
/// values are clamped to [0, 1] and rounded to the nearest of 256 levels (NaN → 0).
pub fn write_png(path: impl AsRef<Path>, t: &Tensor) -> Result<(), IoError> {
    let path = path.as_ref();
    let (c, h, w) = png_layout(t.shape()).map_err(|m| invalid(path, ErrorKind::InvalidInput, m))?;
    let chw: Vec<f32> = t.iter().copied().collect();
    let mut hwc = vec![0u8; chw.len()];
    for (ch, plane) in chw.chunks_exact(h * w).enumerate() {
        for (i, &v) in plane.iter().enumerate() {
            // `as u8` maps NaN to 0; the clamp keeps everything else in range.
            hwc[i * c + ch] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    let color = if c == 1 {
        ExtendedColorType::L8
    } else {
        ExtendedColorType::Rgb8
    };
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(&hwc, w as u32, h as u32, color)
        .map_err(|e| {
            invalid(
                path,
                ErrorKind::InvalidInput,
                format!("cannot encode PNG: {e}"),
            )
        })?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("bbc-png-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn rgb_round_trip_is_exact_on_the_255_grid() {
        let dir = scratch("rgb");
        let data: Vec<f32> = (0..3 * 5 * 7)
            .map(|i| ((i * 37) % 256) as f32 / 255.0)
            .collect();
        let t = Tensor::from_shape_vec(IxDyn(&[1, 3, 5, 7]), data).unwrap();
        let p = dir.join("a.png");
        write_png(&p, &t).unwrap();
        let back = read_png(&p).unwrap();
        assert_eq!(back.shape(), &[1, 3, 5, 7]);
        assert_eq!(back, t);
        // [C, H, W] is accepted too.
        let chw = t.clone().into_shape_with_order(IxDyn(&[3, 5, 7])).unwrap();
        write_png(&p, &chw).unwrap();
        assert_eq!(read_png(&p).unwrap(), t);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn grey_values_are_clamped_and_rounded() {
        let dir = scratch("grey");
        let t = Tensor::from_shape_vec(
            IxDyn(&[1, 1, 1, 6]),
            vec![-0.5, 0.0, 0.5, 1.0 / 510.0 + 1e-6, 2.0, f32::NAN],
        )
        .unwrap();
        let p = dir.join("g.png");
        write_png(&p, &t).unwrap();
        let back = read_png(&p).unwrap();
        assert_eq!(back.shape(), &[1, 1, 1, 6]);
        let levels: Vec<u8> = back.iter().map(|v| (v * 255.0).round() as u8).collect();
        assert_eq!(levels, [0, 0, 128, 1, 255, 0]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn alpha_is_dropped_and_sixteen_bit_is_scaled() {
        let dir = scratch("alpha");
        let p = dir.join("rgba.png");
        let rgba: Vec<u8> = vec![10, 20, 30, 0, 40, 50, 60, 255];
        image::save_buffer(&p, &rgba, 2, 1, ExtendedColorType::Rgba8).unwrap();
        let t = read_png(&p).unwrap();
        assert_eq!(t.shape(), &[1, 3, 1, 2]);
        let want: Vec<f32> = [10u8, 40, 20, 50, 30, 60]
            .iter()
            .map(|&v| f32::from(v) / 255.0)
            .collect();
        assert_eq!(t.iter().copied().collect::<Vec<_>>(), want);

        let p16 = dir.join("la16.png");
        // `save_buffer` takes native-endian 16-bit samples: (grey, alpha) per pixel.
        let native: Vec<u8> = [65535u16, 0, 32768, 65535]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        image::save_buffer(&p16, &native, 2, 1, ExtendedColorType::La16).unwrap();
        let t = read_png(&p16).unwrap();
        assert_eq!(t.shape(), &[1, 1, 1, 2]);
        assert_eq!(
            t.iter().copied().collect::<Vec<_>>(),
            [1.0, 32768.0 / 65535.0]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = scratch("errors");
        let p = dir.join("x.png");
        let bad = Tensor::zeros(IxDyn(&[2, 3, 4, 4]));
        let e = write_png(&p, &bad).unwrap_err().to_string();
        assert!(e.contains("x.png") && e.contains("[1, C, H, W]"), "{e}");
        let e = write_png(&p, &Tensor::zeros(IxDyn(&[1, 2, 4, 4])))
            .unwrap_err()
            .to_string();
        assert!(e.contains("C = 1 (grey) or C = 3"), "{e}");
        let e = write_png(&p, &Tensor::zeros(IxDyn(&[1, 3, 0, 4])))
            .unwrap_err()
            .to_string();
        assert!(e.contains("0x4"), "{e}");
        assert!(!p.exists(), "nothing is written on error");
        std::fs::write(&p, b"not a png").unwrap();
        let e = read_png(&p).unwrap_err().to_string();
        assert!(
            e.contains("x.png") && e.contains("not a readable PNG"),
            "{e}"
        );
        let e = read_png(dir.join("missing.png")).unwrap_err().to_string();
        assert!(e.contains("missing.png"), "{e}");
        assert!(is_png_path("a/B.PNG") && !is_png_path("a.npy") && !is_png_path("png"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
