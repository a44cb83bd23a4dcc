//! Writing a compiled program's folder (`bbc compile -o DIR`, for any target) so that a
//! failure never leaves a half-written program behind: the files go to a fresh folder
//! beside the destination, which then takes its place. What a killed write left beside it
//! is removed by the next write of the same folder.

use std::path::{Path, PathBuf};

use crate::atomic::{check_parent, sweep_abandoned};

/// A file every compiled program folder holds, of any target: an existing folder holding
/// one of these is a program that `force` may replace.
pub const PROGRAM_MARKERS: &[&str] = &["plan.json", "model.o"];

/// Writes the folder `dir`: `fill` writes the files into a temporary folder beside it, which
/// is then renamed into place. An existing non-empty `dir` is replaced only with `force` and
/// only if it holds a compiled program ([`PROGRAM_MARKERS`]), so a mistyped path never
/// deletes unrelated files. `io` turns a message into the caller's error type.
pub fn write_program_dir<E>(
    dir: &Path,
    force: bool,
    fill: impl FnOnce(&Path) -> Result<(), E>,
    io: impl Fn(String) -> E,
) -> Result<(), E> {
    let replace = check_destination(dir, force).map_err(&io)?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let stem = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".into());
    check_parent(dir).map_err(&io)?;
    // A write that fails removes its own temporary folder; one killed mid-way cannot.
    sweep_abandoned(&parent, &format!(".{stem}.partial-"));
    let temp = parent.join(format!(".{stem}.partial-{}", std::process::id()));
    let written = std::fs::create_dir(&temp)
        .map_err(|e| io(format!("cannot write `{}`: {e}", temp.display())))
        .and_then(|()| fill(&temp));
    let placed = written.and_then(|()| move_into_place(&temp, dir, replace).map_err(&io));
    if placed.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    placed
}

/// What is at the destination: nothing (or an empty folder) to replace
/// freely, or a previous program that `--force` allows replacing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Destination {
    Free,
    EmptyDir,
    Program,
}

fn check_destination(dir: &Path, force: bool) -> Result<Destination, String> {
    if !dir.exists() {
        return Ok(Destination::Free);
    }
    if !dir.is_dir() {
        return Err(format!("`{}` exists and is not a folder", dir.display()));
    }
    let mut entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read `{}`: {e}", dir.display()))?;
    if entries.next().is_none() {
        return Ok(Destination::EmptyDir);
    }
    if !PROGRAM_MARKERS.iter().any(|m| dir.join(m).is_file()) {
        return Err(format!(
            "`{}` is not empty and holds no compiled program; choose another folder",
            dir.display()
        ));
    }
    if !force {
        return Err(format!(
            "`{}` already holds a compiled program; pass --force to replace it",
            dir.display()
        ));
    }
    Ok(Destination::Program)
}

/// Renames the finished `temp` folder to `dir`, moving a previous program
/// aside first and deleting it only once the new one is in place.
fn move_into_place(temp: &Path, dir: &Path, replace: Destination) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot create `{}`: {e}", dir.display());
    match replace {
        Destination::Free => std::fs::rename(temp, dir).map_err(fail),
        Destination::EmptyDir => {
            std::fs::remove_dir(dir).map_err(fail)?;
            std::fs::rename(temp, dir).map_err(fail)
        }
        Destination::Program => {
            let old = temp.with_extension("old");
            std::fs::rename(dir, &old).map_err(fail)?;
            if let Err(e) = std::fs::rename(temp, dir) {
                let _ = std::fs::rename(&old, dir);
                return Err(fail(e));
            }
            let _ = std::fs::remove_dir_all(&old);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An interrupted write's temporary folder (its process gone) is removed by the next
    /// write of the same folder; one of a running process, or of another folder, is kept.
    #[test]
    fn interrupted_writes_are_swept() {
        let parent = std::env::temp_dir().join(format!("bbc-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        std::fs::create_dir_all(&parent).unwrap();
        // No process has this id (Linux's pid_max is at most 2^22); pid 1 always runs.
        let gone = parent.join(".prog.partial-4294967294");
        let running = parent.join(".prog.partial-1");
        let other = parent.join(".other.partial-4294967294");
        for d in [&gone, &running, &other] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("model.o"), b"half").unwrap();
        }
        let written = write_program_dir(
            &parent.join("prog"),
            false,
            |dir| std::fs::write(dir.join("plan.json"), b"{}"),
            std::io::Error::other,
        );
        written.unwrap();
        assert!(parent.join("prog/plan.json").is_file());
        assert_eq!(gone.exists(), !cfg!(target_os = "linux"));
        assert!(running.exists() && other.exists());
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
