//! Errors for tensor IO.
//!
//! Every variant carries the path of the file involved, so a message reaching
//! the user always says *which* file is wrong and *what* is wrong with it,
//! plus a hint where the likely cause is known.

use std::path::PathBuf;

use crate::checkpoint::DType;

/// An error reading or writing a tensor file (safetensors or `.npy`).
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The operating system refused a read, write or rename.
    #[error("{}: {source}", path.display())]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying OS error.
        #[source]
        source: std::io::Error,
    },

    /// The file is shorter than the 8-byte header-length prefix.
    #[error(
        "{}: not a safetensors file: {len} bytes is shorter than the 8-byte header-length prefix",
        path.display()
    )]
    TooShort {
        /// File involved.
        path: PathBuf,
        /// Actual file length in bytes.
        len: u64,
    },

    /// The file is recognisably of another format (a NumPy array, a PyTorch checkpoint).
    #[error("{}: not a safetensors file: it is {format}\nhelp: {hint}", path.display())]
    OtherFormat {
        /// File involved.
        path: PathBuf,
        /// What the file is, e.g. "a NumPy .npy array".
        format: &'static str,
        /// How to get a safetensors file instead.
        hint: &'static str,
    },

    /// The header-length prefix points past the end of the file.
    #[error(
        "{}: not a safetensors file: header length {header_len} exceeds file size {file_len}",
        path.display()
    )]
    HeaderLength {
        /// File involved.
        path: PathBuf,
        /// Header length announced by the prefix.
        header_len: u64,
        /// Actual file length in bytes.
        file_len: u64,
    },

    /// The JSON header is malformed or describes inconsistent tensors.
    #[error("{}: invalid safetensors header: {reason}", path.display())]
    BadHeader {
        /// File involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The header describes more (or less) data than the file holds.
    #[error(
        "{}: header describes {expected} bytes of tensor data but the file holds {actual} \
         (truncated or partially written file?)",
        path.display()
    )]
    SizeMismatch {
        /// File involved.
        path: PathBuf,
        /// Data bytes according to the header.
        expected: u64,
        /// Data bytes actually present after the header.
        actual: u64,
    },

    /// The requested tensor is not in the checkpoint.
    #[error("{}: no tensor named `{name}` ({count} tensors in file)", path.display())]
    MissingTensor {
        /// File involved.
        path: PathBuf,
        /// Requested tensor name.
        name: String,
        /// Number of tensors the file does hold.
        count: usize,
    },

    /// The tensor is stored in a dtype that cannot be widened exactly to f32.
    #[error(
        "{}: tensor `{name}` has dtype {dtype}; only F32, F16 and BF16 can be loaded \
         (convert the checkpoint to float32)",
        path.display()
    )]
    UnsupportedDType {
        /// File involved.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Stored dtype.
        dtype: DType,
    },

    /// Tensor data was requested from a checkpoint opened with
    /// [`Checkpoint::header_only`](crate::Checkpoint::header_only).
    #[error(
        "{}: cannot load tensor `{name}`: checkpoint was opened header-only \
         (use Checkpoint::open to read data)",
        path.display()
    )]
    HeaderOnly {
        /// File involved.
        path: PathBuf,
        /// Tensor name.
        name: String,
    },

    /// A tensor name is unusable when saving (duplicate or reserved).
    #[error("{}: cannot save tensor `{name}`: {reason}", path.display())]
    BadTensorName {
        /// File involved.
        path: PathBuf,
        /// Offending name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },

    /// A `.npy` file is malformed.
    #[error("{}: invalid .npy file: {reason}", path.display())]
    BadNpy {
        /// File involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A `.npy` file holds an element type other than float32/float64.
    #[error(
        "{}: .npy dtype {descr} is not supported; expected float32 or float64 \
         (convert with arr.astype(np.float32))",
        path.display()
    )]
    NpyDType {
        /// File involved.
        path: PathBuf,
        /// The numpy type descriptor found in the header.
        descr: String,
    },
}

impl IoError {
    /// Wraps an OS error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IoError::Io {
            path: path.into(),
            source,
        }
    }
}
