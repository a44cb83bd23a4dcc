//! Atomic file replacement shared by the safetensors and `.npy` writers.
//!
//! Bytes go to a uniquely named temporary file in the destination's own
//! directory (so the final `rename` never crosses a filesystem), are synced,
//! and only then renamed over the target. A crash or error therefore leaves
//! either the old file or the complete new one, never a half-written file.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::IoError;

/// Distinguishes temporaries created concurrently by threads of one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically (temp file + rename). A symlink is followed (its
/// target is replaced, not the link); an existing path that is not a regular file (a
/// directory, a device such as `/dev/null`, a pipe) is refused rather than replaced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let resolved;
    let path = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            resolved = std::fs::canonicalize(path).map_err(|e| IoError::io(path, e))?;
            resolved.as_path()
        }
        _ => path,
    };
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() {
            return Err(IoError::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a regular file; refusing to replace it",
                ),
            ));
        }
    }
    let file_name = path.file_name().ok_or_else(|| {
        IoError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        // `create_new` so a stale temp of another writer is never clobbered.
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            // Best effort: the temp may not exist if creating it failed.
            let _ = std::fs::remove_file(&tmp);
            Err(IoError::io(path, e))
        }
    }
}
