//! The checked-in `bbc.h` is what cbindgen makes from the current source.

#[path = "../tools/header.rs"]
mod header;

#[test]
fn the_checked_in_header_is_current() {
    let fresh = header::generate().expect("cbindgen runs");
    let path = header::header_path();
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != fresh {
        let line = current
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || current.lines().count().min(fresh.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "{} is out of date (first difference on line {line}); regenerate it with\n    \
             cargo run -p bbc-capi --example gen-header",
            path.display()
        );
    }
    for name in [
        "bbc_model_compile_file",
        "bbc_model_run",
        "bbc_error_message",
        "BBC_OK",
    ] {
        assert!(fresh.contains(name), "`{name}` is missing from the header");
    }
}
