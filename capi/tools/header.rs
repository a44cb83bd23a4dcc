//! Generates `bbc.h` from the crate's source with cbindgen and `cbindgen.toml`; shared by
//! the `gen-header` example (which writes it) and the test that checks it is current.

use std::path::{Path, PathBuf};

/// The crate's folder, where `bbc.h` and `cbindgen.toml` live.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The checked-in header.
pub fn header_path() -> PathBuf {
    crate_dir().join("bbc.h")
}

/// The header as cbindgen makes it from the current source.
pub fn generate() -> Result<String, String> {
    let dir = crate_dir();
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml"))?;
    let bindings = cbindgen::generate_with_config(Path::new(&dir), config)
        .map_err(|e| format!("cbindgen: {e}"))?;
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).map_err(|e| format!("the header is not UTF-8: {e}"))
}
