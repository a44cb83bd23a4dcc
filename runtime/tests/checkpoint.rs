//! Safetensors round trips, dtype widening, header-only listing, and error
//! handling for corrupt files.

mod common;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use bbc_runtime::{save, save_with_metadata, Checkpoint, DType, IoError, Rng, Tensor};
use common::TempDir;
use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, View};

/// Minimal `View` so tests can write arbitrary dtypes with the reference
/// serializer.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn sample_tensors() -> Vec<(String, Tensor)> {
    let mut rng = Rng::new(7);
    let transposed = rng.standard_normal_tensor(&[3, 4]).reversed_axes();
    vec![
        ("b.weight".into(), rng.standard_normal_tensor(&[2, 3, 4])),
        ("a.bias".into(), rng.standard_normal_tensor(&[5])),
        ("scalar".into(), ArrayD::from_elem(IxDyn(&[]), 1.5)),
        ("empty".into(), Tensor::zeros(IxDyn(&[0, 3]))),
        // Non-standard memory layout must be saved in logical order.
        ("t".into(), transposed),
    ]
}

fn as_refs(v: &[(String, Tensor)]) -> Vec<(String, &Tensor)> {
    v.iter().map(|(n, t)| (n.clone(), t)).collect()
}

/// Writes a valid F32 checkpoint and returns its bytes.
fn valid_file(dir: &TempDir) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("ok.safetensors");
    let ts = sample_tensors();
    save(&path, &as_refs(&ts)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn f32_round_trip() {
    let dir = TempDir::new("ck-rt");
    let path = dir.join("m.safetensors");
    let ts = sample_tensors();
    save(&path, &as_refs(&ts)).unwrap();

    let ck = Checkpoint::open(&path).unwrap();
    let names: Vec<&str> = ck.entries().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a.bias", "b.weight", "empty", "scalar", "t"]);
    for (name, t) in &ts {
        let e = ck.entry(name).unwrap();
        assert_eq!(e.dtype, DType::F32);
        assert_eq!(e.shape, t.shape());
        let loaded = ck.load(name).unwrap();
        assert_eq!(&loaded, t, "{name}");
        assert!(loaded.is_standard_layout());
    }
    assert!(ck.metadata().is_empty());
    assert!(!ck.is_header_only());
    // No temp files left behind by the atomic write.
    assert_eq!(dir.listing(), ["m.safetensors"]);
}

#[test]
fn saved_file_is_readable_by_reference_parser() {
    let dir = TempDir::new("ck-ref");
    let (_, bytes) = valid_file(&dir);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("a.bias").unwrap();
    assert_eq!(view.dtype(), Dtype::F32);
    assert_eq!(view.shape(), &[5]);
    // Header is padded so data starts 8-byte aligned.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(n % 8, 0);
}

#[test]
fn metadata_round_trip_and_deterministic_bytes() {
    let dir = TempDir::new("ck-meta");
    let ts = sample_tensors();
    let meta: BTreeMap<String, String> = [("format", "pt"), ("bbc", "0.1"), ("z", "last")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let p1 = dir.join("1.safetensors");
    let p2 = dir.join("2.safetensors");
    save_with_metadata(&p1, &as_refs(&ts), &meta).unwrap();
    // Same tensors given in a different order: identical file.
    let mut rev = as_refs(&ts);
    rev.reverse();
    save_with_metadata(&p2, &rev, &meta).unwrap();
    assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());

    let ck = Checkpoint::open(&p1).unwrap();
    assert_eq!(ck.metadata(), &meta);
    assert_eq!(Checkpoint::header_only(&p1).unwrap().metadata(), &meta);
}

#[test]
fn save_overwrites_existing_file() {
    let dir = TempDir::new("ck-over");
    let path = dir.join("m.safetensors");
    std::fs::write(&path, b"old junk").unwrap();
    let t = Tensor::ones(IxDyn(&[2]));
    save(&path, &[("x".to_string(), &t)]).unwrap();
    assert_eq!(Checkpoint::open(&path).unwrap().load("x").unwrap(), t);
    assert_eq!(dir.listing(), ["m.safetensors"]);
}

#[test]
fn save_rejects_duplicate_and_reserved_names() {
    let dir = TempDir::new("ck-dup");
    let path = dir.join("m.safetensors");
    let t = Tensor::ones(IxDyn(&[2]));
    let err = save(&path, &[("x".into(), &t), ("x".into(), &t)]).unwrap_err();
    assert!(matches!(err, IoError::BadTensorName { .. }), "{err}");
    let err = save(&path, &[("__metadata__".into(), &t)]).unwrap_err();
    assert!(matches!(err, IoError::BadTensorName { .. }), "{err}");
    assert!(dir.listing().is_empty(), "nothing written on error");
}

#[test]
fn save_into_missing_directory_is_io_error() {
    let dir = TempDir::new("ck-nodir");
    let path = dir.join("no/such/dir/m.safetensors");
    let t = Tensor::ones(IxDyn(&[1]));
    let err = save(&path, &[("x".into(), &t)]).unwrap_err();
    assert!(matches!(err, IoError::Io { .. }));
    assert!(err.to_string().contains("m.safetensors"), "{err}");
}

#[test]
fn f16_bf16_widen_exactly_and_other_dtypes_refused() {
    let dir = TempDir::new("ck-half");
    let path = dir.join("h.safetensors");
    let vals = [0.0f32, 1.0, -2.5, 65504.0, 1.0e-7, 0.333_251_95];
    let f16s: Vec<half::f16> = vals.iter().map(|&v| half::f16::from_f32(v)).collect();
    let bf16s: Vec<half::bf16> = vals.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let raws = [
        (
            "h",
            Raw {
                dtype: Dtype::F16,
                shape: vec![2, 3],
                data: f16s.iter().flat_map(|v| v.to_le_bytes()).collect(),
            },
        ),
        (
            "b",
            Raw {
                dtype: Dtype::BF16,
                shape: vec![6],
                data: bf16s.iter().flat_map(|v| v.to_le_bytes()).collect(),
            },
        ),
        (
            "i",
            Raw {
                dtype: Dtype::I64,
                shape: vec![2],
                data: vec![0; 16],
            },
        ),
        (
            "q",
            Raw {
                dtype: Dtype::F8_E4M3,
                shape: vec![3],
                data: vec![0; 3],
            },
        ),
    ];
    let bytes = safetensors::serialize(raws.iter().map(|(n, r)| (*n, r)), None).unwrap();
    std::fs::write(&path, bytes).unwrap();

    let ck = Checkpoint::open(&path).unwrap();
    let h = ck.load("h").unwrap();
    assert_eq!(h.shape(), &[2, 3]);
    let expect_h: Vec<f32> = f16s.iter().map(|v| v.to_f32()).collect();
    assert_eq!(h.iter().copied().collect::<Vec<_>>(), expect_h);
    let b = ck.load("b").unwrap();
    let expect_b: Vec<f32> = bf16s.iter().map(|v| v.to_f32()).collect();
    assert_eq!(b.iter().copied().collect::<Vec<_>>(), expect_b);

    assert_eq!(ck.entry("h").unwrap().dtype, DType::F16);
    assert_eq!(ck.entry("b").unwrap().dtype, DType::BF16);
    assert_eq!(ck.entry("i").unwrap().dtype, DType::I64);
    let q = &ck.entry("q").unwrap().dtype;
    assert_eq!(q, &DType::Other("F8_E4M3".into()));
    assert_eq!(q.to_string(), "F8_E4M3");
    assert_eq!(DType::BF16.to_string(), "BF16");
    assert_eq!(DType::Bool.to_string(), "BOOL");

    let err = ck.load("i").unwrap_err();
    match &err {
        IoError::UnsupportedDType { name, dtype, .. } => {
            assert_eq!(name, "i");
            assert_eq!(dtype, &DType::I64);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("I64"), "{err}");
    assert!(matches!(
        ck.load("q"),
        Err(IoError::UnsupportedDType { .. })
    ));
}

#[test]
fn header_only_matches_full_listing() {
    let dir = TempDir::new("ck-hdr");
    let (path, _) = valid_file(&dir);
    let full = Checkpoint::open(&path).unwrap();
    let hdr = Checkpoint::header_only(&path).unwrap();
    assert_eq!(full.entries(), hdr.entries());
    assert!(hdr.is_header_only());
    assert_eq!(hdr.path(), path.as_path());
    assert!(matches!(hdr.load("t"), Err(IoError::HeaderOnly { .. })));
}

#[test]
fn missing_tensor_is_error() {
    let dir = TempDir::new("ck-miss");
    let (path, _) = valid_file(&dir);
    let err = Checkpoint::open(&path).unwrap().load("nope").unwrap_err();
    assert!(
        matches!(err, IoError::MissingTensor { count: 5, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("nope"));
}

/// Opens `bytes` as a file both ways; both must agree on success/failure.
fn open_both(dir: &TempDir, name: &str, bytes: &[u8]) -> Result<Checkpoint, IoError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let full = Checkpoint::open(&path);
    let hdr = Checkpoint::header_only(&path);
    assert_eq!(full.is_ok(), hdr.is_ok(), "{name}: {full:?} vs {hdr:?}");
    if let Err(e) = &full {
        assert!(e.to_string().contains(name), "error lacks path: {e}");
    }
    full
}

#[test]
fn empty_and_tiny_files() {
    let dir = TempDir::new("ck-empty");
    let err = open_both(&dir, "empty.safetensors", b"").unwrap_err();
    assert!(matches!(err, IoError::TooShort { len: 0, .. }), "{err}");
    let err = open_both(&dir, "tiny.safetensors", b"abc").unwrap_err();
    assert!(matches!(err, IoError::TooShort { len: 3, .. }), "{err}");
}

#[test]
fn garbage_file_reports_header_length() {
    let dir = TempDir::new("ck-garbage");
    let mut bytes = 123_456_789u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0xAB; 34]);
    let err = open_both(&dir, "g.safetensors", &bytes).unwrap_err();
    assert!(matches!(err, IoError::HeaderLength { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("not a safetensors file: header length 123456789 exceeds file size 42"),
        "{msg}"
    );
    // Text that happens to be long enough.
    let err = open_both(
        &dir,
        "text.safetensors",
        b"hello world, this is not a model",
    )
    .unwrap_err();
    assert!(matches!(err, IoError::HeaderLength { .. }), "{err}");
}

#[test]
fn bad_json_and_bad_offsets() {
    let dir = TempDir::new("ck-json");
    let with_header = |h: &str, data: usize| {
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(h.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data));
        b
    };
    let err = open_both(&dir, "j.safetensors", &with_header("{not json", 0)).unwrap_err();
    assert!(matches!(err, IoError::BadHeader { .. }), "{err}");
    let err = open_both(&dir, "u.safetensors", &with_header("\u{ff}\u{fe}", 0)).unwrap_err();
    assert!(matches!(err, IoError::BadHeader { .. }), "{err}");

    // Offsets past the end of the data.
    let h = r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let err = open_both(&dir, "o.safetensors", &with_header(h, 8)).unwrap_err();
    assert!(
        matches!(
            err,
            IoError::SizeMismatch {
                expected: 16,
                actual: 8,
                ..
            }
        ),
        "{err}"
    );
    // Offsets inconsistent with shape.
    let h = r#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#;
    let err = open_both(&dir, "s.safetensors", &with_header(h, 16)).unwrap_err();
    assert!(matches!(err, IoError::BadHeader { .. }), "{err}");
    // Overlapping tensors.
    let h = r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let err = open_both(&dir, "v.safetensors", &with_header(h, 12)).unwrap_err();
    assert!(matches!(err, IoError::BadHeader { .. }), "{err}");
    // Shape whose size overflows.
    let h = r#"{"x":{"dtype":"F32","shape":[18446744073709551615,4],"data_offsets":[0,0]}}"#;
    let err = open_both(&dir, "ov.safetensors", &with_header(h, 0)).unwrap_err();
    assert!(matches!(err, IoError::BadHeader { .. }), "{err}");
    // Unknown dtype name.
    let h = r#"{"x":{"dtype":"Q4","shape":[2],"data_offsets":[0,1]}}"#;
    let err = open_both(&dir, "q.safetensors", &with_header(h, 1)).unwrap_err();
    assert!(matches!(err, IoError::BadHeader { .. }), "{err}");
    // A well-formed empty checkpoint is fine.
    let ck = open_both(&dir, "e.safetensors", &with_header("{}      ", 0)).unwrap();
    assert!(ck.entries().is_empty());
}

#[test]
fn every_truncation_is_an_error() {
    let dir = TempDir::new("ck-trunc");
    let (_, bytes) = valid_file(&dir);
    for len in 0..bytes.len() {
        let r = open_both(&dir, "cut.safetensors", &bytes[..len]);
        assert!(r.is_err(), "truncated to {len} bytes accepted");
    }
    // Cutting tensor data specifically reports a size mismatch.
    let err = open_both(&dir, "cut.safetensors", &bytes[..bytes.len() - 4]).unwrap_err();
    assert!(matches!(err, IoError::SizeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    // Trailing junk is also rejected.
    let mut long = bytes.clone();
    long.push(0);
    assert!(open_both(&dir, "long.safetensors", &long).is_err());
}

#[test]
fn corrupted_bytes_never_panic() {
    let dir = TempDir::new("ck-corrupt");
    let (_, bytes) = valid_file(&dir);
    let mut rng = Rng::new(99);
    for i in 0..300 {
        let mut b = bytes.clone();
        let k = (rng.next_u64() % 4 + 1) as usize;
        for _ in 0..k {
            // Bias corruption towards the prefix and header.
            let limit = if i % 2 == 0 {
                300.min(b.len())
            } else {
                b.len()
            };
            let pos = (rng.next_u64() as usize) % limit;
            b[pos] = rng.next_u64() as u8;
        }
        if let Ok(ck) = open_both(&dir, "c.safetensors", &b) {
            for e in ck.entries().to_vec() {
                let _ = ck.load(&e.name);
            }
        }
    }
}

#[test]
fn missing_file_is_io_error() {
    let dir = TempDir::new("ck-none");
    let path = dir.join("absent.safetensors");
    let err = Checkpoint::open(&path).unwrap_err();
    assert!(matches!(err, IoError::Io { .. }));
    assert!(err.to_string().contains("absent.safetensors"));
    assert!(matches!(
        Checkpoint::header_only(&path),
        Err(IoError::Io { .. })
    ));
}

/// Tensors are read from the file when loaded: one cut short after its header was read
/// gives an I/O error for each tensor it lost, not a panic or stale data.
#[test]
fn file_truncated_after_opening_is_io_error() {
    let dir = TempDir::new("ck-cut");
    let (path, bytes) = valid_file(&dir);
    let ck = Checkpoint::open(&path).unwrap();
    // Keep the length prefix and the header, drop every tensor's data.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    std::fs::write(&path, &bytes[..8 + header_len]).unwrap();
    for e in ck.entries() {
        match ck.load(&e.name) {
            Ok(t) => assert_eq!(t.len(), 0, "{} has data", e.name),
            Err(err) => {
                assert!(matches!(err, IoError::Io { .. }), "{err}");
                assert!(err.to_string().contains("ok.safetensors"), "{err}");
            }
        }
    }
}

#[test]
fn reads_files_from_reference_serializer_with_metadata() {
    let dir = TempDir::new("ck-refmeta");
    let path = dir.join("r.safetensors");
    let data: Vec<u8> = [1.0f32, 2.0, 3.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let raw = Raw {
        dtype: Dtype::F32,
        shape: vec![3],
        data,
    };
    let meta: HashMap<String, String> = [("k".to_string(), "v".to_string())].into();
    safetensors::serialize_to_file([("w", &raw)], Some(meta), &path).unwrap();
    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.metadata().get("k").map(String::as_str), Some("v"));
    assert_eq!(
        ck.load("w").unwrap().iter().copied().collect::<Vec<_>>(),
        [1.0, 2.0, 3.0]
    );
}
