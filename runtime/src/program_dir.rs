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
/// deletes unrelated files. A symbolic link is followed: the folder it points to is
/// written, and the link kept (as the file writers do, `crate::write_atomic`). `io` turns
/// a message into the caller's error type; messages name `dir` as given, not the
/// temporary folder.
pub fn write_program_dir<E>(
    dir: &Path,
    force: bool,
    fill: impl FnOnce(&Path) -> Result<(), E>,
    io: impl Fn(String) -> E,
) -> Result<(), E> {
    let target = follow_link(dir).map_err(&io)?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let stem = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".into());
    check_parent(&target).map_err(&io)?;
    recover_interrupted(&target, &parent, &stem).map_err(&io)?;
    let replace = check_destination(dir, &target, force).map_err(&io)?;
    // A write that fails removes its own temporary folder; one killed mid-way cannot.
    sweep_abandoned(&parent, &format!(".{stem}.partial-"));
    let temp = parent.join(format!(".{stem}.partial-{}", std::process::id()));
    let written = std::fs::create_dir(&temp)
        .map_err(|e| {
            io(format!(
                "cannot write `{}`: cannot create a folder in `{}`: {e}",
                dir.display(),
                parent.display()
            ))
        })
        .and_then(|()| fill(&temp));
    let placed = written
        .and_then(|()| move_into_place(&temp, dir, &target, &parent, &stem, replace).map_err(&io));
    if placed.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    placed
}

/// `dir`, or the folder it points to where it is a symbolic link, which must exist.
fn follow_link(dir: &Path) -> Result<PathBuf, String> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() => std::fs::canonicalize(dir).map_err(|e| {
            let to = std::fs::read_link(dir)
                .map(|t| format!(" to `{}`", t.display()))
                .unwrap_or_default();
            format!(
                "cannot write `{}`: it is a symbolic link{to} that cannot be followed: {e}\n\
                 help: remove the link, or create the folder it points to",
                dir.display()
            )
        }),
        _ => Ok(dir.to_path_buf()),
    }
}

/// The name a replaced program is moved aside to until the new one is in place.
fn aside_prefix(stem: &str) -> String {
    format!(".{stem}.old-")
}

/// Finishes what a write killed between its two renames left: the previous program moved
/// aside (`.{stem}.old-PID`, its process gone) is put back where no program took its
/// place, and removed where one did.
fn recover_interrupted(target: &Path, parent: &Path, stem: &str) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(());
    };
    let prefix = aside_prefix(stem);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || crate::atomic::process_runs(pid) {
            continue;
        }
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let aside = entry.path();
        let outcome = if std::fs::symlink_metadata(target).is_err() {
            std::fs::rename(&aside, target)
        } else {
            std::fs::remove_dir_all(&aside)
        };
        outcome.map_err(|e| {
            format!(
                "cannot write `{}`: `{}`, a previous program an interrupted write moved \
                 aside, cannot be put back or removed: {e}\nhelp: remove `{}` or move it back",
                target.display(),
                aside.display(),
                aside.display()
            )
        })?;
    }
    Ok(())
}

/// What is at the destination: nothing (or an empty folder) to replace
/// freely, or a previous program that `--force` allows replacing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Destination {
    Free,
    EmptyDir,
    Program,
}

/// `target` is `dir` with a symbolic link followed; messages name `dir`.
fn check_destination(dir: &Path, target: &Path, force: bool) -> Result<Destination, String> {
    if !target.exists() {
        return Ok(Destination::Free);
    }
    if !target.is_dir() {
        return Err(format!("`{}` exists and is not a folder", dir.display()));
    }
    let mut entries =
        std::fs::read_dir(target).map_err(|e| format!("cannot read `{}`: {e}", dir.display()))?;
    if entries.next().is_none() {
        return Ok(Destination::EmptyDir);
    }
    if !PROGRAM_MARKERS.iter().any(|m| target.join(m).is_file()) {
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

/// Renames the finished `temp` folder to `target` (`dir` with a link followed), moving a
/// previous program aside first and deleting it only once the new one is in place.
fn move_into_place(
    temp: &Path,
    dir: &Path,
    target: &Path,
    parent: &Path,
    stem: &str,
    replace: Destination,
) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot create `{}`: {e}", dir.display());
    match replace {
        Destination::Free => std::fs::rename(temp, target).map_err(fail),
        Destination::EmptyDir => {
            std::fs::remove_dir(target).map_err(fail)?;
            std::fs::rename(temp, target).map_err(fail)
        }
        Destination::Program => {
            let old = parent.join(format!("{}{}", aside_prefix(stem), std::process::id()));
            std::fs::rename(target, &old).map_err(|e| {
                format!(
                    "cannot replace `{}`: cannot move the previous program aside to `{}`: \
                     {e}\nhelp: if `{}` is left from an earlier write, remove it",
                    dir.display(),
                    old.display(),
                    old.display()
                )
            })?;
            if let Err(e) = std::fs::rename(temp, target) {
                let _ = std::fs::rename(&old, target);
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
