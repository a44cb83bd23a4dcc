//! The functions generated CPU code calls by symbol name. The JIT registers these very
//! functions; an ahead-of-time object imports the symbols, which this crate exports (so a
//! program linking the runtime library resolves them).

/// `ln` of an f32 through f64, as the reference implementation computes it.
#[no_mangle]
pub extern "C" fn bbc_logf(x: f32) -> f32 {
    f64::from(x).ln() as f32
}

/// `a^b` through f64, as the reference implementation computes it.
#[no_mangle]
pub extern "C" fn bbc_powf(a: f32, b: f32) -> f32 {
    f64::from(a).powf(f64::from(b)) as f32
}

/// `(symbol, address)` of every function above, for a JIT's symbol table.
pub fn symbols() -> [(&'static str, *const u8); 2] {
    [
        ("bbc_logf", bbc_logf as *const u8),
        ("bbc_powf", bbc_powf as *const u8),
    ]
}
