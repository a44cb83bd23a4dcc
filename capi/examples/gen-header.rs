//! Writes `capi/bbc.h` from the crate's source: `cargo run -p bbc-capi --example gen-header`.

#[path = "../tools/header.rs"]
mod header;

use std::process::ExitCode;

fn main() -> ExitCode {
    match header::generate() {
        Ok(text) => match std::fs::write(header::header_path(), text) {
            Ok(()) => {
                println!("wrote {}", header::header_path().display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "error: cannot write {}: {e}",
                    header::header_path().display()
                );
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
