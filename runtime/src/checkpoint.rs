//! Safetensors checkpoints: listing, loading as f32, and atomic saving.
//!
//! Format: an 8-byte little-endian header length `n`, `n` bytes of JSON
//! mapping tensor names to `{dtype, shape, data_offsets}` (plus an optional
//! `__metadata__` string map), then the packed tensor data. Offsets are
//! relative to the end of the header.
//!
//! The header is parsed with the `safetensors` crate's own `Metadata` type,
//! so offset/size validation matches the reference implementation; the
//! length prefix and file-size checks are done here so that
//! [`Checkpoint::header_only`] never has to read tensor data.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use safetensors::tensor::Metadata;
use safetensors::Dtype;

use crate::atomic::write_atomic;
use crate::{IoError, Tensor};

/// Size of the little-endian header-length prefix.
const PREFIX: u64 = 8;

/// Same cap as the `safetensors` crate: a larger header is certainly
/// corrupt, and refusing it avoids a huge allocation on garbage input.
const MAX_HEADER: u64 = 100_000_000;

/// Element type of a stored tensor, named as in safetensors headers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit float.
    F64,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer.
    I32,
    /// Unsigned byte.
    U8,
    /// Boolean.
    Bool,
    /// Any other safetensors dtype, by its header name (e.g. `"F8_E4M3"`).
    Other(String),
}

impl DType {
    fn from_safetensors(d: Dtype) -> DType {
        match d {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            Dtype::I64 => DType::I64,
            Dtype::I32 => DType::I32,
            Dtype::U8 => DType::U8,
            Dtype::BOOL => DType::Bool,
            // `Dtype`'s Display already yields the header spelling.
            other => DType::Other(other.to_string()),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
            DType::Other(s) => s,
        })
    }
}

/// Name, dtype and shape of one stored tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// Tensor name (e.g. a parameter path).
    pub name: String,
    /// Stored element type.
    pub dtype: DType,
    /// Shape; empty for a scalar.
    pub shape: Vec<usize>,
}

/// An opened safetensors file.
///
/// Created by [`Checkpoint::open`] (the file kept open, tensors loadable)
/// or [`Checkpoint::header_only`] (listing only).
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    entries: Vec<EntryInfo>,
    /// Byte range of each tensor's data, relative to the data section.
    ranges: BTreeMap<String, (usize, usize)>,
    metadata: BTreeMap<String, String>,
    /// The file, each tensor read from it straight into its own storage (one copy, where
    /// reading the whole file first and converting made two, each faulting in 100 MB of
    /// fresh pages for ResNet-50); `None` when opened header-only. The lock keeps each
    /// seek and read together.
    file: Option<Mutex<File>>,
    /// Where the data section starts in the file.
    data_start: u64,
}

/// Header fields parsed from a file, before data is attached.
struct Parsed {
    entries: Vec<EntryInfo>,
    ranges: BTreeMap<String, (usize, usize)>,
    metadata: BTreeMap<String, String>,
    /// Offset of the data section from the start of the file.
    data_start: u64,
}

impl Checkpoint {
    /// Reads and validates the header, keeping the file open; tensors can then be
    /// [`load`](Self::load)ed.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint, IoError> {
        let path = path.as_ref();
        let (file, parsed) = Checkpoint::read_header(path)?;
        Ok(Checkpoint::assemble(path, parsed, Some(file)))
    }

    /// Reads only the length prefix and JSON header, not the tensor data.
    ///
    /// Still checks that the file size matches the header, so a truncated
    /// file is reported here too. [`load`](Self::load) on the result fails
    /// with [`IoError::HeaderOnly`].
    pub fn header_only(path: impl AsRef<Path>) -> Result<Checkpoint, IoError> {
        let path = path.as_ref();
        let (_, parsed) = Checkpoint::read_header(path)?;
        Ok(Checkpoint::assemble(path, parsed, None))
    }

    fn read_header(path: &Path) -> Result<(File, Parsed), IoError> {
        let mut file = File::open(path).map_err(|e| IoError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| IoError::io(path, e))?.len();
        let mut prefix = [0u8; PREFIX as usize];
        let got = if file_len >= PREFIX {
            file.read_exact(&mut prefix)
                .map_err(|e| IoError::io(path, e))?;
            Some(&prefix[..])
        } else {
            None
        };
        let header_len = read_prefix(path, got, file_len)?;
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| IoError::io(path, e))?;
        let parsed = parse_header(path, &header, file_len)?;
        Ok((file, parsed))
    }

    fn assemble(path: &Path, parsed: Parsed, file: Option<File>) -> Checkpoint {
        Checkpoint {
            path: path.to_path_buf(),
            entries: parsed.entries,
            ranges: parsed.ranges,
            metadata: parsed.metadata,
            file: file.map(Mutex::new),
            data_start: parsed.data_start,
        }
    }

    /// Path the checkpoint was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All stored tensors, sorted by name.
    pub fn entries(&self) -> &[EntryInfo] {
        &self.entries
    }

    /// The entry called `name`, if present.
    pub fn entry(&self, name: &str) -> Option<&EntryInfo> {
        self.entries
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The `__metadata__` string map (empty if the file has none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Whether this checkpoint was opened with [`header_only`](Self::header_only).
    pub fn is_header_only(&self) -> bool {
        self.file.is_none()
    }

    /// Loads tensor `name` as f32. F32 is copied exactly; F16 and BF16 are
    /// widened (exactly: every half value is representable in f32). Other
    /// dtypes give [`IoError::UnsupportedDType`].
    pub fn load(&self, name: &str) -> Result<Tensor, IoError> {
        let entry = self.entry(name).ok_or_else(|| IoError::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
            count: self.entries.len(),
        })?;
        if !matches!(entry.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(IoError::UnsupportedDType {
                path: self.path.clone(),
                name: name.to_string(),
                dtype: entry.dtype.clone(),
            });
        }
        let file = self.file.as_ref().ok_or_else(|| IoError::HeaderOnly {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        let &(start, end) = self
            .ranges
            .get(name)
            .ok_or_else(|| self.bad_header(format!("no data range for `{name}`")))?;
        // A file that changed since its header was read fails here, not later.
        let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut read = |bytes: &mut [u8]| {
            file.seek(SeekFrom::Start(self.data_start + start as u64))
                .and_then(|_| file.read_exact(bytes))
                .map_err(|e| IoError::io(&self.path, e))
        };
        let len = end - start;
        let values: Vec<f32> = match &entry.dtype {
            DType::F32 => {
                let mut values = vec![0.0f32; len / 4];
                // SAFETY: any bytes are a valid f32; the view covers exactly `values`.
                read(unsafe {
                    std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), len / 4 * 4)
                })?;
                // Stored little-endian: a no-op on little-endian hosts.
                for v in &mut values {
                    *v = f32::from_bits(u32::from_le(v.to_bits()));
                }
                values
            }
            dtype => {
                let mut bytes = vec![0u8; len];
                read(&mut bytes)?;
                let (halves, _) = bytes.as_chunks::<2>();
                if *dtype == DType::F16 {
                    halves
                        .iter()
                        .map(|&b| half::f16::from_le_bytes(b).to_f32())
                        .collect()
                } else {
                    halves
                        .iter()
                        .map(|&b| half::bf16::from_le_bytes(b).to_f32())
                        .collect()
                }
            }
        };
        Tensor::from_shape_vec(ndarray::IxDyn(&entry.shape), values)
            .map_err(|e| self.bad_header(format!("tensor `{name}`: {e}")))
    }

    fn bad_header(&self, reason: String) -> IoError {
        IoError::BadHeader {
            path: self.path.clone(),
            reason,
        }
    }
}

/// Decodes and range-checks the header-length prefix.
fn read_prefix(path: &Path, prefix: Option<&[u8]>, file_len: u64) -> Result<u64, IoError> {
    let prefix: [u8; 8] = prefix
        .and_then(|p| p.try_into().ok())
        .ok_or(IoError::TooShort {
            path: path.to_path_buf(),
            len: file_len,
        })?;
    // Another format's magic would otherwise read as a nonsense header length.
    let other = if prefix.starts_with(b"\x93NUMPY") {
        Some((
            "a NumPy .npy array",
            "a checkpoint holds named tensors; save them with safetensors.numpy.save_file",
        ))
    } else if prefix.starts_with(b"PK\x03\x04") {
        Some((
            "a zip archive, such as a PyTorch .pt/.pth checkpoint",
            "convert it with safetensors.torch.save_file(torch.load(path), \"model.safetensors\")",
        ))
    } else {
        None
    };
    if let Some((format, hint)) = other {
        return Err(IoError::OtherFormat {
            path: path.to_path_buf(),
            format,
            hint,
        });
    }
    let header_len = u64::from_le_bytes(prefix);
    if header_len > file_len - PREFIX {
        return Err(IoError::HeaderLength {
            path: path.to_path_buf(),
            header_len,
            file_len,
        });
    }
    if header_len > MAX_HEADER {
        return Err(IoError::BadHeader {
            path: path.to_path_buf(),
            reason: format!("header length {header_len} exceeds the {MAX_HEADER}-byte limit"),
        });
    }
    Ok(header_len)
}

/// Parses the JSON header and checks the data section size against the file.
fn parse_header(path: &Path, header: &[u8], file_len: u64) -> Result<Parsed, IoError> {
    let bad = |reason: String| IoError::BadHeader {
        path: path.to_path_buf(),
        reason,
    };
    // Some writers pad with NULs rather than spaces; neither is JSON.
    let trimmed = header
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(&header[..0], |last| &header[..=last]);
    let meta: Metadata = serde_json::from_slice(trimmed).map_err(|e| bad(e.to_string()))?;

    let data_start = PREFIX + header.len() as u64;
    let expected = meta.data_len() as u64;
    let actual = file_len - data_start;
    if expected != actual {
        return Err(IoError::SizeMismatch {
            path: path.to_path_buf(),
            expected,
            actual,
        });
    }

    let mut entries = Vec::new();
    let mut ranges = BTreeMap::new();
    for (name, info) in meta.tensors() {
        entries.push(EntryInfo {
            name: name.clone(),
            dtype: DType::from_safetensors(info.dtype),
            shape: info.shape.clone(),
        });
        ranges.insert(name, info.data_offsets);
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Ok(Parsed {
        entries,
        ranges,
        metadata,
        data_start,
    })
}

/// Saves `tensors` as an F32 safetensors file, atomically.
///
/// Equivalent to [`save_with_metadata`] with an empty metadata map.
pub fn save(path: impl AsRef<Path>, tensors: &[(String, &Tensor)]) -> Result<(), IoError> {
    save_with_metadata(path, tensors, &BTreeMap::new())
}

/// Saves `tensors` as an F32 safetensors file with a `__metadata__` map
/// (omitted when empty), atomically.
///
/// Tensors are laid out in name order and JSON keys are sorted, so equal
/// inputs always produce byte-identical files. Duplicate names and the
/// reserved name `__metadata__` are rejected.
pub fn save_with_metadata(
    path: impl AsRef<Path>,
    tensors: &[(String, &Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<(), IoError> {
    let path = path.as_ref();
    let mut sorted: Vec<&(String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let bad_name = |name: &str, reason| IoError::BadTensorName {
        path: path.to_path_buf(),
        name: name.to_string(),
        reason,
    };
    for pair in sorted.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(bad_name(&pair[0].0, "duplicate tensor name"));
        }
    }

    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut offset = 0usize;
    for (name, t) in &sorted {
        if name == "__metadata__" {
            return Err(bad_name(name, "`__metadata__` is reserved by the format"));
        }
        let end = offset + t.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": "F32",
                "shape": t.shape(),
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut header_bytes = serde_json::Value::Object(header).to_string().into_bytes();
    // Pad with spaces to 8 bytes so the data section is aligned, as the
    // reference writer does.
    header_bytes.resize(header_bytes.len().next_multiple_of(8), b' ');

    let mut bytes = Vec::with_capacity(8 + header_bytes.len() + offset);
    bytes.extend_from_slice(&(header_bytes.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header_bytes);
    for (_, t) in &sorted {
        // `iter` walks in logical (row-major) order whatever the memory layout.
        for v in t.iter() {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    write_atomic(path, &bytes)
}
