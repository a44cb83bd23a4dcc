//! NumPy `.npy` files: read float32/float64 arrays of any rank as f32,
//! write f32 arrays.
//!
//! Header parsing and writing use `ndarray-npy`. Before any element buffer is
//! allocated the header's shape is checked against the bytes actually in the
//! file, so a corrupt shape cannot trigger a huge allocation (which would
//! abort rather than return an error).

use std::path::Path;

use ndarray::ShapeBuilder;
use ndarray_npy::npy::header::Header;
use ndarray_npy::WriteNpyExt;

use crate::atomic::write_atomic;
use crate::{IoError, Tensor};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a `.npy` file holding float32 or float64 data (f64 is narrowed to
/// f32), either byte order, C or Fortran order; the result is always in
/// standard (C) layout.
pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor, IoError> {
    let path = path.as_ref();
    let bad = |reason: String| IoError::BadNpy {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, e))?;

    if bytes.len() < 10 || !bytes.starts_with(MAGIC) {
        return Err(bad(format!(
            "missing the \\x93NUMPY magic prefix ({} bytes in file)",
            bytes.len()
        )));
    }
    // Validate the header length ourselves: ndarray-npy would allocate
    // whatever length the (possibly garbage) prefix claims.
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("unsupported format version {v}.{}", bytes[7]))),
    };
    if header_start + header_len > bytes.len() {
        return Err(bad(format!(
            "header length {header_len} exceeds file size {}",
            bytes.len()
        )));
    }

    let mut rest: &[u8] = &bytes;
    let header = Header::from_reader(&mut rest).map_err(|e| bad(e.to_string()))?;
    let descr = header.type_descriptor.as_string().map(String::as_str);
    let (width, big_endian) = match descr {
        Some("<f4") => (4, false),
        Some(">f4") => (4, true),
        Some("<f8") => (8, false),
        Some(">f8") => (8, true),
        _ => {
            return Err(IoError::NpyDType {
                path: path.to_path_buf(),
                descr: header.type_descriptor.to_string(),
            })
        }
    };
    let needed = header
        .shape
        .iter()
        .try_fold(width, |acc: usize, &d| acc.checked_mul(d));
    if needed != Some(rest.len()) {
        let needed = needed.map_or("more than usize::MAX".to_string(), |n| n.to_string());
        return Err(bad(format!(
            "shape {:?} needs {needed} data bytes but the file holds {} \
             (truncated or corrupt file?)",
            header.shape,
            rest.len()
        )));
    }

    let values: Vec<f32> = if width == 4 {
        rest.chunks_exact(4)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                if big_endian {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                }
            })
            .collect()
    } else {
        rest.chunks_exact(8)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                // Narrowing is the documented contract: callers work in f32.
                if big_endian {
                    f64::from_be_bytes(b) as f32
                } else {
                    f64::from_le_bytes(b) as f32
                }
            })
            .collect()
    };
    let shape = ndarray::IxDyn(&header.shape).set_f(header.layout.is_fortran());
    let t = Tensor::from_shape_vec(shape, values).map_err(|e| bad(e.to_string()))?;
    Ok(if t.is_standard_layout() {
        t
    } else {
        t.as_standard_layout().into_owned()
    })
}

/// Writes `t` as a little-endian float32 `.npy` file, atomically (temp
/// file in the same directory, then rename).
pub fn write_npy(path: impl AsRef<Path>, t: &Tensor) -> Result<(), IoError> {
    let path = path.as_ref();
    let mut bytes = Vec::new();
    t.write_npy(&mut bytes)
        .map_err(|e| IoError::io(path, std::io::Error::other(e.to_string())))?;
    write_atomic(path, &bytes)
}
