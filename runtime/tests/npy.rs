//! `.npy` round trips, f64 narrowing, Fortran order, and corrupt files.

mod common;

use bbc_runtime::{read_npy, write_npy, IoError, Rng, Tensor};
use common::TempDir;
use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use ndarray_npy::WriteNpyExt;

fn write_with<T: WriteNpyExt>(path: &std::path::Path, a: &T) {
    let mut bytes = Vec::new();
    a.write_npy(&mut bytes).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Hand-builds a version-1 `.npy` file from a header dict literal and raw data.
fn npy_v1(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut h = dict.to_string();
    // Pad so the data starts 64-byte aligned, as numpy does.
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

#[test]
fn round_trip_various_ranks() {
    let dir = TempDir::new("npy-rt");
    let mut rng = Rng::new(3);
    for shape in [
        vec![],
        vec![7],
        vec![2, 3, 4],
        vec![1, 0, 2],
        vec![2, 1, 2, 3],
    ] {
        let t = rng.standard_normal_tensor(&shape);
        let path = dir.join("a.npy");
        write_npy(&path, &t).unwrap();
        let back = read_npy(&path).unwrap();
        assert_eq!(back, t, "shape {shape:?}");
    }
    assert_eq!(dir.listing(), ["a.npy"], "no temp files left behind");
}

#[test]
fn round_trip_non_standard_layout() {
    let dir = TempDir::new("npy-layout");
    let t = Rng::new(4).standard_normal_tensor(&[3, 5]).reversed_axes();
    let path = dir.join("t.npy");
    write_npy(&path, &t).unwrap();
    let back = read_npy(&path).unwrap();
    assert_eq!(back, t);
    assert!(back.is_standard_layout());
}

#[test]
fn reads_f64_narrowed() {
    let dir = TempDir::new("npy-f64");
    let path = dir.join("d.npy");
    let a = ArrayD::<f64>::from_shape_vec(IxDyn(&[2, 2]), vec![0.1, -2.0, 1e300, 3.25]).unwrap();
    write_with(&path, &a);
    let t = read_npy(&path).unwrap();
    assert_eq!(t.shape(), &[2, 2]);
    let expect: Vec<f32> = a.iter().map(|&v| v as f32).collect();
    assert_eq!(t.iter().copied().collect::<Vec<_>>(), expect);
}

#[test]
fn reads_fortran_order() {
    let dir = TempDir::new("npy-fortran");
    let path = dir.join("f.npy");
    let values: Vec<f32> = (0..6).map(|v| v as f32).collect();
    let a = ArrayD::from_shape_vec(IxDyn(&[2, 3]).f(), values).unwrap();
    write_with(&path, &a);
    let header = std::fs::read(&path).unwrap();
    assert!(String::from_utf8_lossy(&header[..80]).contains("'fortran_order': True"));
    let t = read_npy(&path).unwrap();
    assert_eq!(t, a);
    assert!(t.is_standard_layout());
}

#[test]
fn reads_big_endian() {
    let dir = TempDir::new("npy-be");
    let path = dir.join("be.npy");
    let mut data = 1.5f32.to_be_bytes().to_vec();
    data.extend_from_slice(&(-4.0f32).to_be_bytes());
    let bytes = npy_v1(
        "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
        &data,
    );
    std::fs::write(&path, bytes).unwrap();
    let t = read_npy(&path).unwrap();
    assert_eq!(t.iter().copied().collect::<Vec<_>>(), [1.5, -4.0]);
}

#[test]
fn integer_npy_is_unsupported() {
    let dir = TempDir::new("npy-int");
    let path = dir.join("i.npy");
    write_with(&path, &ArrayD::<i64>::zeros(IxDyn(&[3])));
    let err = read_npy(&path).unwrap_err();
    assert!(matches!(err, IoError::NpyDType { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("i.npy") && msg.contains("<i8"), "{msg}");
}

#[test]
fn corrupt_files_are_errors() {
    let dir = TempDir::new("npy-bad");
    let path = dir.join("x.npy");
    let t: Tensor = Rng::new(5).standard_normal_tensor(&[4, 4]);
    write_npy(&path, &t).unwrap();
    let good = std::fs::read(&path).unwrap();

    for len in 0..good.len() {
        std::fs::write(&path, &good[..len]).unwrap();
        let err = read_npy(&path).unwrap_err();
        assert!(matches!(err, IoError::BadNpy { .. }), "len {len}: {err}");
        assert!(err.to_string().contains("x.npy"));
    }
    let mut long = good.clone();
    long.extend_from_slice(&[0; 4]);
    std::fs::write(&path, &long).unwrap();
    assert!(matches!(read_npy(&path), Err(IoError::BadNpy { .. })));

    std::fs::write(&path, b"definitely not numpy data").unwrap();
    assert!(matches!(read_npy(&path), Err(IoError::BadNpy { .. })));

    // Version 2 header claiming ~4 GB: rejected before any allocation.
    let mut v2 = b"\x93NUMPY\x02\x00\xff\xff\xff\xff".to_vec();
    v2.extend_from_slice(b"{}");
    std::fs::write(&path, &v2).unwrap();
    let err = read_npy(&path).unwrap_err();
    assert!(err.to_string().contains("exceeds file size"), "{err}");

    // A shape far larger than the data: rejected before allocating.
    let bytes = npy_v1(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4000000000000, 4000000000), }",
        &[0; 16],
    );
    std::fs::write(&path, &bytes).unwrap();
    let err = read_npy(&path).unwrap_err();
    assert!(matches!(err, IoError::BadNpy { .. }), "{err}");

    let missing = dir.join("absent.npy");
    assert!(matches!(read_npy(&missing), Err(IoError::Io { .. })));
}

#[test]
fn corrupted_bytes_never_panic() {
    let dir = TempDir::new("npy-fuzz");
    let path = dir.join("c.npy");
    let t: Tensor = Rng::new(6).standard_normal_tensor(&[3, 2]);
    write_npy(&path, &t).unwrap();
    let good = std::fs::read(&path).unwrap();
    let mut rng = Rng::new(11);
    for _ in 0..300 {
        let mut b = good.clone();
        let pos = (rng.next_u64() as usize) % 128.min(b.len());
        b[pos] = rng.next_u64() as u8;
        std::fs::write(&path, &b).unwrap();
        let _ = read_npy(&path);
    }
}
