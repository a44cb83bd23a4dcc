//! Atomic file replacement shared by the safetensors and `.npy` writers.
//!
//! Bytes go to a uniquely named temporary file in the destination's own
//! directory (so the final `rename` never crosses a filesystem), are synced,
//! and only then renamed over the target. A crash or error therefore leaves
//! either the old file or the complete new one, never a half-written file; what
//! a killed write left (its temporary) is removed by the next write of the same
//! file, here and for `program_dir`'s folders alike ([`sweep_abandoned`]).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::IoError;

/// Distinguishes temporaries created concurrently by threads of one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Checks, before any work is done, that a file can be created or replaced at `path`: it
/// is not a folder, and its folder exists ([`check_parent`]). The message is worded as every
/// writer words it: "cannot write `PATH`: why".
pub fn check_writable(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!("cannot write `{}`: it is a folder", path.display()));
    }
    check_parent(path)
}

/// Checks that the folder `path` would be created in exists and is a folder.
pub fn check_parent(path: &Path) -> Result<(), String> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let why = match std::fs::metadata(parent) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => format!("`{}` is not a folder", parent.display()),
        Err(_) => format!(
            "the folder `{}` does not exist (create it first)",
            parent.display()
        ),
    };
    Err(format!("cannot write `{}`: {why}", path.display()))
}

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
    let prefix = format!(".{}.tmp.", file_name.to_string_lossy());
    sweep_abandoned(&dir, &prefix);
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

/// Removes what interrupted writes left in `parent`: entries named `{prefix}PID` or
/// `{prefix}PID.N` whose process no longer runs. A write that fails removes its own
/// temporary; one killed mid-way cannot.
pub(crate) fn sweep_abandoned(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|rest| rest.split('.').next())
            .and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || process_runs(pid) {
            continue;
        }
        // The entry itself, never what a symbolic link points to.
        let _ = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(entry.path()),
            Ok(_) => std::fs::remove_file(entry.path()),
            Err(_) => continue,
        };
    }
}

/// Whether process `pid` runs; `true` where that cannot be told (nothing is removed then).
pub(crate) fn process_runs(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary an interrupted write left (its process gone) is removed by the next
    /// write of the same file; one of a running process, or of another file, is kept.
    #[test]
    fn interrupted_writes_are_swept() {
        let dir = std::env::temp_dir().join(format!("bbc-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // No process has this id (Linux's pid_max is at most 2^22); pid 1 always runs.
        let gone = dir.join(".w.safetensors.tmp.4294967294.0");
        let running = dir.join(".w.safetensors.tmp.1.3");
        let other = dir.join(".v.safetensors.tmp.4294967294.0");
        for f in [&gone, &running, &other] {
            std::fs::write(f, b"half").unwrap();
        }
        write_atomic(&dir.join("w.safetensors"), b"whole").unwrap();
        assert_eq!(std::fs::read(dir.join("w.safetensors")).unwrap(), b"whole");
        assert_eq!(gone.exists(), !cfg!(target_os = "linux"));
        assert!(running.exists() && other.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
