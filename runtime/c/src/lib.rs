//! `libbbcrt`, the C API of the bbc runtime: loads a model compiled ahead of time
//! (`bbc compile SPEC --target cpu -o DIR`, whose `model.o` defines its descriptor) with its
//! weights file, and runs it. It holds the CPU runtime only (`bbc-runtime` without GPU
//! executors): no compiler, no parser.
//!
//! Every function checks its pointers and catches panics, so a misuse or an internal error
//! becomes an error value, never a crash across the boundary. Functions that can fail take
//! an optional `bbcrt_error **error`: on failure it receives an error the caller frees with
//! [`bbcrt_error_free`] (it is only written on failure).
//!
//! `bbcrt.h` is generated from this file by cbindgen and committed; the test
//! `header_is_current` fails when it is stale, and `BBCRT_WRITE_HEADER=1 cargo test -p
//! bbc-rt header` rewrites it.

#![allow(non_camel_case_types)]

use bbc_runtime::aot::{Model, ModelDescriptor};
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// A compiled model's descriptor, defined by its object file (declared in its `model.h`).
pub struct bbcrt_descriptor {
    _private: [u8; 0],
}

/// A loaded model. Not for concurrent use: one run at a time (each run uses every thread
/// of the model's pool).
pub struct bbcrt_model {
    model: Model,
    input_names: Vec<CString>,
    output_names: Vec<CString>,
}

/// An error: a message.
pub struct bbcrt_error {
    message: CString,
}

fn error_value(message: String) -> *mut bbcrt_error {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    Box::into_raw(Box::new(bbcrt_error { message }))
}

/// Runs `f`, turning an error or a panic into `fallback` and an error in `*error`.
fn guard<T>(error: *mut *mut bbcrt_error, fallback: T, f: impl FnOnce() -> Result<T, String>) -> T {
    let message = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => return value,
        Ok(Err(message)) => message,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            format!("internal error: {what}")
        }
    };
    if !error.is_null() {
        // SAFETY: the caller passes NULL or a writable `bbcrt_error *`.
        unsafe { *error = error_value(message) };
    }
    fallback
}

fn names(list: &[bbc_runtime::desc::IoDesc]) -> Vec<CString> {
    list.iter()
        .map(|io| CString::new(io.name.replace('\0', " ")).unwrap_or_default())
        .collect()
}

/// Loads the model `descriptor` describes (`&bbc_model_<name>` from its `model.h`) with
/// the weights file at `weights_path` (its `weights.bin`, checked by size and digest), on
/// `threads` threads (0: one per core). Returns NULL on failure, with the reason in
/// `*error` (a CPU without the features the code was compiled for, a missing, truncated or
/// foreign weights file, ...).
///
/// # Safety
///
/// `descriptor` must be a descriptor from an object file `bbc compile --target cpu` wrote
/// (or NULL); `weights_path` a NUL-terminated string (or NULL); `error` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bbcrt_model_load(
    descriptor: *const bbcrt_descriptor,
    weights_path: *const c_char,
    threads: usize,
    error: *mut *mut bbcrt_error,
) -> *mut bbcrt_model {
    guard(error, std::ptr::null_mut(), || {
        let descriptor = descriptor.cast::<ModelDescriptor>();
        if descriptor.is_null() || !descriptor.is_aligned() {
            return Err("the descriptor pointer is NULL or misaligned".into());
        }
        if weights_path.is_null() {
            return Err("the weights path is NULL".into());
        }
        // SAFETY: a NUL-terminated string (the caller's contract).
        let path = unsafe { CStr::from_ptr(weights_path) };
        #[cfg(unix)]
        let path = PathBuf::from(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()),
        );
        #[cfg(not(unix))]
        let path = PathBuf::from(
            path.to_str()
                .map_err(|_| "the weights path is not UTF-8".to_string())?,
        );
        // SAFETY: a descriptor from a compiled object (the caller's contract).
        let model =
            unsafe { Model::load(&*descriptor, &path, threads) }.map_err(|e| e.to_string())?;
        let (input_names, output_names) = (names(model.inputs()), names(model.outputs()));
        Ok(Box::into_raw(Box::new(bbcrt_model {
            model,
            input_names,
            output_names,
        })))
    })
}

/// The model behind a pointer, if it is not NULL.
///
/// # Safety
///
/// `model` is NULL or a live model from [`bbcrt_model_load`].
unsafe fn model_ref<'a>(model: *const bbcrt_model) -> Option<&'a bbcrt_model> {
    // SAFETY: the caller's contract.
    unsafe { model.as_ref() }
}

/// Which list an accessor reads.
#[derive(Clone, Copy)]
enum Side {
    Input,
    Output,
}

/// Runs an accessor of entry `i` of the inputs or outputs, with `none` for a NULL model,
/// an index out of range or a panic.
///
/// # Safety
///
/// As [`model_ref`].
unsafe fn entry<T>(
    model: *const bbcrt_model,
    side: Side,
    i: usize,
    none: T,
    f: impl FnOnce(&bbc_runtime::desc::IoDesc, &CString) -> T,
) -> T {
    // SAFETY: the caller's contract.
    let Some(m) = (unsafe { model_ref(model) }) else {
        return none;
    };
    let (list, names) = match side {
        Side::Input => (m.model.inputs(), &m.input_names),
        Side::Output => (m.model.outputs(), &m.output_names),
    };
    match (list.get(i), names.get(i)) {
        (Some(io), Some(name)) => guard(std::ptr::null_mut(), none, || Ok(f(io, name))),
        _ => none,
    }
}

/// The number of inputs (0 for NULL).
///
/// # Safety
///
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbcrt_model_num_inputs(model: *const bbcrt_model) -> usize {
    // SAFETY: the caller's contract.
    unsafe { model_ref(model) }.map_or(0, |m| m.model.inputs().len())
}

/// The number of outputs (0 for NULL).
///
/// # Safety
///
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbcrt_model_num_outputs(model: *const bbcrt_model) -> usize {
    // SAFETY: the caller's contract.
    unsafe { model_ref(model) }.map_or(0, |m| m.model.outputs().len())
}

/// The name of input `i` (valid while the model lives), or NULL if there is none.
///
/// # Safety
///
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbcrt_model_input_name(
    model: *const bbcrt_model,
    i: usize,
) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { entry(model, Side::Input, i, std::ptr::null(), |_, n| n.as_ptr()) }
}

/// The name of output `i` (valid while the model lives), or NULL if there is none.
///
/// # Safety
///
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbcrt_model_output_name(
    model: *const bbcrt_model,
    i: usize,
) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { entry(model, Side::Output, i, std::ptr::null(), |_, n| n.as_ptr()) }
}

/// The rank of input `i` (0 if there is none).
///
/// # Safety
///
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbcrt_model_input_rank(model: *const bbcrt_model, i: usize) -> usize {
    // SAFETY: the caller's contract.
    unsafe { entry(model, Side::Input, i, 0, |io, _| io.shape.len()) }
}

/// The rank of output `i` (0 if there is none).
///
/// # Safety
///
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbcrt_model_output_rank(model: *const bbcrt_model, i: usize) -> usize {
    // SAFETY: the caller's contract.
    unsafe { entry(model, Side::Output, i, 0, |io, _| io.shape.len()) }
}

/// The shape of input `i`: its rank's sizes (valid while the model lives), or NULL.
///
/// # Safety
///
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbcrt_model_input_shape(
    model: *const bbcrt_model,
    i: usize,
) -> *const usize {
    // SAFETY: the caller's contract.
    unsafe {
        entry(model, Side::Input, i, std::ptr::null(), |io, _| {
            io.shape.as_ptr()
        })
    }
}

/// The shape of output `i`: its rank's sizes (valid while the model lives), or NULL.
///
/// # Safety
///
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbcrt_model_output_shape(
    model: *const bbcrt_model,
    i: usize,
) -> *const usize {
    // SAFETY: the caller's contract.
    unsafe {
        entry(model, Side::Output, i, std::ptr::null(), |io, _| {
            io.shape.as_ptr()
        })
    }
}

/// The element count of input `i` (0 if there is none).
///
/// # Safety
///
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbcrt_model_input_len(model: *const bbcrt_model, i: usize) -> usize {
    // SAFETY: the caller's contract.
    unsafe { entry(model, Side::Input, i, 0, |io, _| io.len()) }
}

/// The element count of output `i` (0 if there is none).
///
/// # Safety
///
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbcrt_model_output_len(model: *const bbcrt_model, i: usize) -> usize {
    // SAFETY: the caller's contract.
    unsafe { entry(model, Side::Output, i, 0, |io, _| io.len()) }
}

/// `count` slices from C arrays of pointers and lengths.
///
/// # Safety
///
/// Each pointer holds its length's floats (or the arrays are NULL, refused).
unsafe fn slices<'a, P: Copy>(
    what: &str,
    pointers: *const P,
    lens: *const usize,
    count: usize,
    cast: impl Fn(P) -> *mut f32,
) -> Result<Vec<&'a mut [f32]>, String> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if pointers.is_null() || lens.is_null() {
        return Err(format!("the {what} arrays are NULL"));
    }
    (0..count)
        .map(|i| {
            // SAFETY: the arrays hold `count` entries (the caller's contract).
            let (p, len) = unsafe { (cast(*pointers.add(i)), *lens.add(i)) };
            if len == 0 {
                return Ok(&mut [][..]);
            }
            if p.is_null() || !p.is_aligned() {
                return Err(format!("{what} {i} is NULL or misaligned"));
            }
            // SAFETY: `p` holds `len` floats (the caller's contract).
            Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
        })
        .collect()
}

/// Runs one inference: `inputs[i]` holds `input_lens[i]` floats of input `i` (row-major,
/// every input in order), and output `i` is written to `outputs[i]`, which has room for
/// `output_lens[i]` floats. Lengths must match the model's. Returns 0, or -1 with the
/// reason in `*error`. Outputs must not overlap inputs.
///
/// # Safety
///
/// `model` is NULL or a live model not used by another thread meanwhile; the arrays hold
/// one entry per input (output), each pointing at its length's floats; `error` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn bbcrt_model_run(
    model: *mut bbcrt_model,
    inputs: *const *const f32,
    input_lens: *const usize,
    outputs: *const *mut f32,
    output_lens: *const usize,
    error: *mut *mut bbcrt_error,
) -> c_int {
    guard(error, -1, || {
        // SAFETY: NULL or a live model used by this thread only (the caller's contract).
        let Some(m) = (unsafe { model.as_mut() }) else {
            return Err("the model is NULL".into());
        };
        let (n_in, n_out) = (m.model.inputs().len(), m.model.outputs().len());
        // SAFETY: the caller's contract; inputs are only read.
        let ins = unsafe {
            slices("input", inputs, input_lens, n_in, |p: *const f32| {
                p.cast_mut()
            })?
        };
        // SAFETY: the caller's contract.
        let mut outs = unsafe { slices("output", outputs, output_lens, n_out, |p| p)? };
        let ins: Vec<&[f32]> = ins.into_iter().map(|s| &*s).collect();
        m.model
            .run_into(&ins, &mut outs)
            .map_err(|e| e.to_string())?;
        Ok(0)
    })
}

/// The message of `error` (valid until it is freed), or NULL for NULL.
///
/// # Safety
///
/// `error` is NULL or a live error.
#[no_mangle]
pub unsafe extern "C" fn bbcrt_error_message(error: *const bbcrt_error) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { error.as_ref() }.map_or(std::ptr::null(), |e| e.message.as_ptr())
}

/// Frees an error (NULL is ignored).
///
/// # Safety
///
/// `error` is NULL or an error from this library, not freed before.
#[no_mangle]
pub unsafe extern "C" fn bbcrt_error_free(error: *mut bbcrt_error) {
    if !error.is_null() {
        // SAFETY: allocated by `error_value` (the caller's contract).
        drop(unsafe { Box::from_raw(error) });
    }
}

/// Frees a model and its threads (NULL is ignored).
///
/// # Safety
///
/// `model` is NULL or a model from [`bbcrt_model_load`], not freed before.
#[no_mangle]
pub unsafe extern "C" fn bbcrt_model_free(model: *mut bbcrt_model) {
    if !model.is_null() {
        // SAFETY: allocated by `bbcrt_model_load` (the caller's contract).
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(model) })));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The header as cbindgen generates it from this file.
    fn generated_header() -> String {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = cbindgen::Config {
            language: cbindgen::Language::C,
            header: Some(
                "/* The bbc runtime's C library (libbbcrt): loads and runs models compiled \
                 ahead of time\n * with `bbc compile SPEC --target cpu -o DIR`. Generated \
                 from runtime/c/src/lib.rs by cbindgen:\n * do not edit; `BBCRT_WRITE_HEADER=1 \
                 cargo test -p bbc-rt header` regenerates it. */"
                    .into(),
            ),
            include_guard: Some("BBCRT_H".into()),
            cpp_compat: true,
            usize_is_size_t: true,
            style: cbindgen::Style::Both,
            documentation: true,
            ..cbindgen::Config::default()
        };
        let mut out = Vec::new();
        cbindgen::Builder::new()
            .with_config(config)
            .with_src(dir.join("src/lib.rs"))
            .generate()
            .expect("cbindgen reads src/lib.rs")
            .write(&mut out);
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn header_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bbcrt.h");
        let generated = generated_header();
        if std::env::var_os("BBCRT_WRITE_HEADER").is_some() {
            std::fs::write(&path, &generated).expect("bbcrt.h is writable");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "runtime/c/bbcrt.h is stale; regenerate it with `BBCRT_WRITE_HEADER=1 cargo test -p \
             bbc-rt header`"
        );
    }

    /// NULL and out-of-range arguments are answered, not crashed on.
    #[test]
    fn misuse_is_an_error() {
        let mut error: *mut bbcrt_error = std::ptr::null_mut();
        // SAFETY: NULL arguments are part of the contract.
        unsafe {
            let path = c"weights.bin";
            let model = bbcrt_model_load(std::ptr::null(), path.as_ptr(), 1, &mut error);
            assert!(model.is_null());
            let message = CStr::from_ptr(bbcrt_error_message(error)).to_str().unwrap();
            assert!(message.contains("NULL"), "{message}");
            bbcrt_error_free(error);
            error = std::ptr::null_mut();
            assert_eq!(
                bbcrt_model_run(
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null(),
                    &mut error
                ),
                -1
            );
            assert!(!error.is_null());
            bbcrt_error_free(error);
            assert_eq!(bbcrt_model_num_inputs(std::ptr::null()), 0);
            assert!(bbcrt_model_output_name(std::ptr::null(), 3).is_null());
            assert!(bbcrt_error_message(std::ptr::null()).is_null());
            bbcrt_model_free(std::ptr::null_mut());
        }
    }
}
