//! The C library again, built by `cargo test` (which builds examples but not a cdylib-only
//! lib) so that the C example's test (`tests/c_example.rs`) has a current one to link.

#[path = "../src/lib.rs"]
pub mod api;
