//! Stable replay harness: runs files (or every file of directories) through a fuzz target's
//! body without libFuzzer, so the targets build and run on a stable toolchain.
//!
//! ```text
//! cargo run --release --bin replay -- <parse|elaborate> <file-or-dir>...
//! ```
//!
//! Each input runs under `catch_unwind` on a thread with a time limit (`REPLAY_TIMEOUT_S`,
//! default 10 s); the harness reports every input that panics or times out and exits with
//! status 1 if there was any.

use bbc_fuzz::Target;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn inputs(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for e in entries {
            inputs(&e, out)?;
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// Runs one input; `Err` describes a panic or a timeout.
fn run_one(target: Target, data: Vec<u8>, limit: Duration) -> Result<Duration, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            let start = Instant::now();
            let r = catch_unwind(AssertUnwindSafe(|| target.run(&data)));
            let _ = tx.send(r.map(|()| start.elapsed()));
        })
        .map_err(|e| format!("cannot spawn a thread: {e}"))?;
    match rx.recv_timeout(limit) {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(p)) => Err(p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .map_or_else(|| "panicked".into(), |m| format!("panicked: {m}"))),
        Err(_) => Err(format!("no result within {limit:?}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(target) = args.first().and_then(|a| Target::from_name(a)) else {
        eprintln!("usage: replay <parse|elaborate> <file-or-dir>...");
        return ExitCode::from(2);
    };
    if args.len() < 2 {
        eprintln!("usage: replay <parse|elaborate> <file-or-dir>...");
        return ExitCode::from(2);
    }
    let limit = std::env::var("REPLAY_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_secs_f64);
    let mut files = Vec::new();
    for a in &args[1..] {
        if let Err(e) = inputs(Path::new(a), &mut files) {
            eprintln!("{a}: {e}");
            return ExitCode::from(2);
        }
    }
    let mut failures = 0;
    let mut slowest = (Duration::ZERO, PathBuf::new());
    for f in &files {
        let data = match std::fs::read(f) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{}: {e}", f.display());
                return ExitCode::from(2);
            }
        };
        match run_one(target, data, limit) {
            Ok(t) if t > slowest.0 => slowest = (t, f.clone()),
            Ok(_) => {}
            Err(why) => {
                failures += 1;
                eprintln!("FAIL {}: {why}", f.display());
            }
        }
    }
    println!(
        "{target:?}: {} inputs, {failures} failed; slowest {:?} ({})",
        files.len(),
        slowest.0,
        slowest.1.display()
    );
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
