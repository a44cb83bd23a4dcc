//! The C API of bbc: `libbbc` and its header `bbc.h` (generated from this file by cbindgen;
//! `cargo run -p bbc-capi --example gen-header` rewrites it).
//!
//! Every function is an `extern "C"` wrapper over the Rust facade (`bbc::CompileOptions`,
//! `bbc::Model`) that turns failures into a status code and a `bbc_error` object, and
//! catches panics so none crosses into C: a panic becomes `BBC_ERROR_INTERNAL`.
//! Pointers from C are checked for NULL, strings for UTF-8, buffers for their lengths.

// The C names (`BBC_OK`, `bbc_model_run`, ...) are the API; cbindgen copies them as they are.
#![allow(non_camel_case_types)]

use facade::{CompileOptions, Error, Model, Target, TensorInfo, Weights};
use std::any::Any;
use std::borrow::Cow;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

/// What a call returned: `BBC_OK`, or the kind of error its `bbc_error` describes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum bbc_status {
    /// Success.
    BBC_OK = 0,
    /// A NULL pointer, a string that is not UTF-8, an index out of range.
    BBC_ERROR_ARGUMENT = 1,
    /// The spec cannot be read or parsed, or the model cannot be built from it; the message
    /// holds the compiler's diagnostics with their source snippets.
    BBC_ERROR_SPEC = 2,
    /// The weights do not fit the model, or the checkpoint cannot be read.
    BBC_ERROR_WEIGHTS = 3,
    /// An invalid option: an unknown target or pass, an optimisation level above 2, or an
    /// option the chosen target does not have.
    BBC_ERROR_OPTIONS = 4,
    /// The model needs more memory than this machine has available.
    BBC_ERROR_MEMORY = 5,
    /// The buffers given to a run do not match the model's inputs or outputs.
    BBC_ERROR_INPUT = 6,
    /// The model cannot be compiled for its target.
    BBC_ERROR_COMPILE = 7,
    /// No device for a GPU target (no Vulkan adapter, no CUDA driver).
    BBC_ERROR_GPU_UNAVAILABLE = 8,
    /// An inference failed on its device.
    BBC_ERROR_RUN = 9,
    /// A bug in bbc, caught before it could cross into C.
    BBC_ERROR_INTERNAL = 10,
}

/// An error: its status and a message (UTF-8, possibly several lines). Free it with
/// `bbc_error_free`.
pub struct bbc_error {
    status: bbc_status,
    message: CString,
}

/// Compile options: which model of the spec, its size parameters and arguments, the
/// optimisation level, the target, the threads and the weights. Create with
/// `bbc_options_new`, free with `bbc_options_free`.
#[derive(Default)]
pub struct bbc_options {
    options: CompileOptions,
}

/// A compiled model with its weights. Create with `bbc_model_compile_file` or
/// `bbc_model_compile_str`, free with `bbc_model_free`. A model may be run from several
/// threads at once.
pub struct bbc_model {
    model: Model,
    name: CString,
    input_names: Vec<CString>,
    output_names: Vec<CString>,
}

/// A failed call: its status and message.
type Failure = (bbc_status, String);

fn failure(e: Error) -> Failure {
    let status = match &e {
        Error::Spec(_) => bbc_status::BBC_ERROR_SPEC,
        Error::Weights(_) => bbc_status::BBC_ERROR_WEIGHTS,
        Error::Options(_) => bbc_status::BBC_ERROR_OPTIONS,
        Error::Memory(_) => bbc_status::BBC_ERROR_MEMORY,
        Error::Input(_) => bbc_status::BBC_ERROR_INPUT,
        Error::Compile { .. } => bbc_status::BBC_ERROR_COMPILE,
        Error::GpuUnavailable(_) => bbc_status::BBC_ERROR_GPU_UNAVAILABLE,
        Error::Run(_) => bbc_status::BBC_ERROR_RUN,
        _ => bbc_status::BBC_ERROR_INTERNAL,
    };
    (status, e.to_string())
}

fn argument(message: impl Into<String>) -> Failure {
    (bbc_status::BBC_ERROR_ARGUMENT, message.into())
}

/// A C string for `text`; a NUL inside (from a spec's text quoted in a diagnostic) is
/// written as `\0`.
fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', "\\0")).unwrap_or_default()
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// Runs `body` with panics caught. On failure `*err` is set to the error (when `err` is
/// not NULL) and its status returned; `*err` is set to NULL first.
///
/// # Safety
/// `err` is NULL or points to writable storage for one pointer.
unsafe fn guard<T>(
    err: *mut *mut bbc_error,
    body: impl FnOnce() -> Result<T, Failure>,
) -> Result<T, bbc_status> {
    if !err.is_null() {
        *err = ptr::null_mut();
    }
    let (status, message) = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(f)) => f,
        Err(payload) => (
            bbc_status::BBC_ERROR_INTERNAL,
            format!("internal error: bbc panicked: {}", panic_message(&*payload)),
        ),
    };
    if !err.is_null() {
        *err = Box::into_raw(Box::new(bbc_error {
            status,
            message: c_string(&message),
        }));
    }
    Err(status)
}

/// [`guard`] for calls that return a status.
///
/// # Safety
/// As for [`guard`].
unsafe fn status(
    err: *mut *mut bbc_error,
    body: impl FnOnce() -> Result<(), Failure>,
) -> bbc_status {
    match guard(err, body) {
        Ok(()) => bbc_status::BBC_OK,
        Err(status) => status,
    }
}

/// For calls that cannot fail but must not unwind into C either: `body`'s value, or
/// `fallback` if it panicked.
fn no_panic<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// The string at `p`, which must be UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
unsafe fn utf8<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(argument(format!("{what} is NULL")));
    }
    CStr::from_ptr(p)
        .to_str()
        .map_err(|e| argument(format!("{what} is not UTF-8: {e}")))
}

/// The object at `p`.
///
/// # Safety
/// `p` is NULL or points to a live object of its type.
unsafe fn object<'a, T>(p: *const T, what: &str) -> Result<&'a T, Failure> {
    p.as_ref()
        .ok_or_else(|| argument(format!("{what} is NULL")))
}

/// Changes the options at `opts` with `change`.
///
/// # Safety
/// `opts` is NULL or a live `bbc_options`; `err` as for [`guard`].
unsafe fn set(
    opts: *mut bbc_options,
    err: *mut *mut bbc_error,
    change: impl FnOnce(CompileOptions) -> Result<CompileOptions, Failure>,
) -> bbc_status {
    status(err, || {
        let opts = opts.as_mut().ok_or_else(|| argument("opts is NULL"))?;
        opts.options = change(std::mem::take(&mut opts.options))?;
        Ok(())
    })
}

/// The version of bbc, e.g. `"0.1.0"`; a static string.
#[no_mangle]
pub extern "C" fn bbc_version() -> *const c_char {
    c_version().as_ptr()
}

const fn c_version() -> &'static CStr {
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => c"",
    }
}

/// The message of `err` (NUL-terminated UTF-8, possibly several lines), valid until
/// `bbc_error_free(err)`; `""` for NULL.
///
/// # Safety
/// `err` is NULL or an error from this library that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn bbc_error_message(err: *const bbc_error) -> *const c_char {
    no_panic(c"".as_ptr(), || match err.as_ref() {
        Some(e) => e.message.as_ptr(),
        None => c"".as_ptr(),
    })
}

/// The status of `err`; `BBC_OK` for NULL.
///
/// # Safety
/// `err` is NULL or an error from this library that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn bbc_error_status(err: *const bbc_error) -> bbc_status {
    no_panic(bbc_status::BBC_ERROR_INTERNAL, || {
        err.as_ref().map_or(bbc_status::BBC_OK, |e| e.status)
    })
}

/// Frees an error; NULL is ignored.
///
/// # Safety
/// `err` is NULL or an error from this library that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn bbc_error_free(err: *mut bbc_error) {
    if !err.is_null() {
        no_panic((), || drop(Box::from_raw(err)));
    }
}

/// New options with the defaults: the spec's last model with its default sizes, `-O2`,
/// the cpu target on all cores, weights initialised with seed 0. NULL only on an internal
/// error.
#[no_mangle]
pub extern "C" fn bbc_options_new() -> *mut bbc_options {
    no_panic(ptr::null_mut(), || Box::into_raw(Box::default()))
}

/// Frees options; NULL is ignored. Models compiled with them are not affected.
///
/// # Safety
/// `opts` is NULL or options from `bbc_options_new` that have not been freed.
#[no_mangle]
pub unsafe extern "C" fn bbc_options_free(opts: *mut bbc_options) {
    if !opts.is_null() {
        no_panic((), || drop(Box::from_raw(opts)));
    }
}

/// Builds the model or model variant `name` of the spec instead of its last one.
///
/// # Safety
/// `opts` is NULL or live options; `name` is NULL or a NUL-terminated string; `err` is NULL
/// or points to a `bbc_error*`, which is set to NULL on success and to a new error (free it
/// with `bbc_error_free`) on failure. The same holds for every function taking these.
#[no_mangle]
pub unsafe extern "C" fn bbc_options_set_model(
    opts: *mut bbc_options,
    name: *const c_char,
    err: *mut *mut bbc_error,
) -> bbc_status {
    set(opts, err, |o| Ok(o.model(utf8(name, "name")?)))
}

/// Binds a size parameter (a named dimension of an `input`, such as `H` in
/// `input x: f32[B=1, 3, H=224, W=224]`) to `value`; binding it again replaces the value.
///
/// # Safety
/// As for `bbc_options_set_model`.
#[no_mangle]
pub unsafe extern "C" fn bbc_options_set_dim(
    opts: *mut bbc_options,
    name: *const c_char,
    value: i64,
    err: *mut *mut bbc_error,
) -> bbc_status {
    set(opts, err, |o| Ok(o.dim(utf8(name, "name")?, value)))
}

/// Sets a parameter of the model itself to `value`, a literal as the spec would write it
/// (`3`, `1.5`, `true`, `"avg"`, `[1, 2]`).
///
/// # Safety
/// As for `bbc_options_set_model`; `value` likewise.
#[no_mangle]
pub unsafe extern "C" fn bbc_options_set_arg(
    opts: *mut bbc_options,
    name: *const c_char,
    value: *const c_char,
    err: *mut *mut bbc_error,
) -> bbc_status {
    set(opts, err, |o| {
        Ok(o.arg(utf8(name, "name")?, utf8(value, "value")?))
    })
}

/// The optimisation level: 0 none, 1 cleanup, 2 everything (the default; 0 on the
/// interpreter).
///
/// # Safety
/// As for `bbc_options_set_model`.
#[no_mangle]
pub unsafe extern "C" fn bbc_options_set_opt_level(
    opts: *mut bbc_options,
    level: u32,
    err: *mut *mut bbc_error,
) -> bbc_status {
    set(opts, err, |o| match u8::try_from(level) {
        Ok(level @ 0..=2) => Ok(o.opt_level(level)),
        _ => Err((
            bbc_status::BBC_ERROR_OPTIONS,
            format!("optimisation level {level} does not exist (0 none, 1 cleanup, 2 everything)"),
        )),
    })
}

/// Threads of the cpu target, the calling thread included; 0 means all cores.
///
/// # Safety
/// As for `bbc_options_set_model`.
#[no_mangle]
pub unsafe extern "C" fn bbc_options_set_threads(
    opts: *mut bbc_options,
    threads: usize,
    err: *mut *mut bbc_error,
) -> bbc_status {
    set(opts, err, |o| Ok(o.threads(threads)))
}

/// Where the model runs: `"cpu"` (native code, the default), `"interp"` (the reference
/// interpreter), `"gpu"` (Vulkan) or `"cuda"`.
///
/// # Safety
/// As for `bbc_options_set_model`.
#[no_mangle]
pub unsafe extern "C" fn bbc_options_set_target(
    opts: *mut bbc_options,
    target: *const c_char,
    err: *mut *mut bbc_error,
) -> bbc_status {
    set(opts, err, |o| {
        let target: Target = utf8(target, "target")?.parse().map_err(failure)?;
        Ok(o.target(target))
    })
}

/// Loads the weights from this safetensors checkpoint (checked against the model first).
///
/// # Safety
/// As for `bbc_options_set_model`; `path` likewise.
#[no_mangle]
pub unsafe extern "C" fn bbc_options_set_weights_file(
    opts: *mut bbc_options,
    path: *const c_char,
    err: *mut *mut bbc_error,
) -> bbc_status {
    set(opts, err, |o| {
        Ok(o.weights(Weights::File(utf8(path, "path")?.into())))
    })
}

/// Initialises the weights with PyTorch's defaults from `seed` (the default, with seed 0).
///
/// # Safety
/// As for `bbc_options_set_model`.
#[no_mangle]
pub unsafe extern "C" fn bbc_options_set_seed(
    opts: *mut bbc_options,
    seed: u64,
    err: *mut *mut bbc_error,
) -> bbc_status {
    set(opts, err, |o| Ok(o.weights(Weights::Seeded(seed))))
}

/// Wraps a compiled model for C.
fn wrap(model: Model) -> *mut bbc_model {
    let names = |infos: &[TensorInfo]| infos.iter().map(|i| c_string(&i.name)).collect();
    Box::into_raw(Box::new(bbc_model {
        name: c_string(model.name()),
        input_names: names(model.inputs()),
        output_names: names(model.outputs()),
        model,
    }))
}

/// The options at `opts`, or the defaults for NULL.
///
/// # Safety
/// `opts` is NULL or live options.
unsafe fn options_or_default<'a>(opts: *const bbc_options) -> Cow<'a, CompileOptions> {
    match opts.as_ref() {
        Some(o) => Cow::Borrowed(&o.options),
        None => Cow::Owned(CompileOptions::new()),
    }
}

/// Loads the spec at `path` (and its imports) and compiles a model of it with `opts` (NULL
/// for the defaults). Returns NULL on failure, with `*err` set.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `opts` is NULL or live options; `err` as for
/// `bbc_options_set_model`.
#[no_mangle]
pub unsafe extern "C" fn bbc_model_compile_file(
    path: *const c_char,
    opts: *const bbc_options,
    err: *mut *mut bbc_error,
) -> *mut bbc_model {
    guard(err, || {
        let path = utf8(path, "path")?;
        let model = options_or_default(opts)
            .compile_file(path)
            .map_err(failure)?;
        Ok(wrap(model))
    })
    .unwrap_or(ptr::null_mut())
}

/// Compiles a model of the spec text `source`; `name` is the file name diagnostics show, and
/// imports are read relative to it. Returns NULL on failure, with `*err` set.
///
/// # Safety
/// As for `bbc_model_compile_file`; `name` and `source` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn bbc_model_compile_str(
    name: *const c_char,
    source: *const c_char,
    opts: *const bbc_options,
    err: *mut *mut bbc_error,
) -> *mut bbc_model {
    guard(err, || {
        let (name, source) = (utf8(name, "name")?, utf8(source, "source")?);
        let model = options_or_default(opts)
            .compile_str(name, source)
            .map_err(failure)?;
        Ok(wrap(model))
    })
    .unwrap_or(ptr::null_mut())
}

/// Frees a model; NULL is ignored. No run of it may be in progress.
///
/// # Safety
/// `model` is NULL or a model from this library that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn bbc_model_free(model: *mut bbc_model) {
    if !model.is_null() {
        no_panic((), || drop(Box::from_raw(model)));
    }
}

/// The model's name in the spec, valid as long as the model; `""` for NULL.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbc_model_name(model: *const bbc_model) -> *const c_char {
    no_panic(c"".as_ptr(), || {
        model.as_ref().map_or(c"".as_ptr(), |m| m.name.as_ptr())
    })
}

/// The inputs or the outputs of a model.
#[derive(Clone, Copy)]
enum Side {
    Inputs,
    Outputs,
}

/// Tensor `index` of one side of `model`, with its C name; `None` for a NULL model or an
/// index out of range.
///
/// # Safety
/// `model` is NULL or a live model.
unsafe fn tensor<'a>(
    model: *const bbc_model,
    side: Side,
    index: usize,
) -> Option<(&'a TensorInfo, &'a CString)> {
    no_panic(None, || {
        let m = model.as_ref()?;
        let (infos, names) = match side {
            Side::Inputs => (m.model.inputs(), &m.input_names),
            Side::Outputs => (m.model.outputs(), &m.output_names),
        };
        Some((infos.get(index)?, names.get(index)?))
    })
}

/// The number of tensors on one side of `model`; 0 for NULL.
///
/// # Safety
/// `model` is NULL or a live model.
unsafe fn count(model: *const bbc_model, side: Side) -> usize {
    no_panic(0, || {
        model.as_ref().map_or(0, |m| match side {
            Side::Inputs => m.model.inputs().len(),
            Side::Outputs => m.model.outputs().len(),
        })
    })
}

/// The shape of tensor `index` of one side of `model`, its rank stored at `rank`.
///
/// # Safety
/// `model` is NULL or a live model; `rank` is NULL or writable.
unsafe fn shape(
    model: *const bbc_model,
    side: Side,
    index: usize,
    rank: *mut usize,
) -> *const usize {
    let (dims, len) = tensor(model, side, index)
        .map_or((ptr::null(), 0), |(t, _)| (t.shape.as_ptr(), t.shape.len()));
    if !rank.is_null() {
        *rank = len;
    }
    dims
}

/// The number of inputs; 0 for NULL.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbc_model_num_inputs(model: *const bbc_model) -> usize {
    count(model, Side::Inputs)
}

/// The name of input `index` (in the order `bbc_model_run` takes them), valid as long as the
/// model; NULL if `index` is out of range.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbc_model_input_name(
    model: *const bbc_model,
    index: usize,
) -> *const c_char {
    tensor(model, Side::Inputs, index).map_or(ptr::null(), |(_, name)| name.as_ptr())
}

/// The shape of input `index`: `*rank` dimensions, valid as long as the model; NULL (and
/// rank 0) if `index` is out of range. `rank` may be NULL.
///
/// # Safety
/// `model` is NULL or a live model; `rank` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bbc_model_input_shape(
    model: *const bbc_model,
    index: usize,
    rank: *mut usize,
) -> *const usize {
    shape(model, Side::Inputs, index, rank)
}

/// The number of floats input `index` holds (the product of its shape); 0 if out of range.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbc_model_input_len(model: *const bbc_model, index: usize) -> usize {
    tensor(model, Side::Inputs, index).map_or(0, |(t, _)| t.len())
}

/// The number of outputs; 0 for NULL.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbc_model_num_outputs(model: *const bbc_model) -> usize {
    count(model, Side::Outputs)
}

/// The name of output `index` (in the order `bbc_model_run` writes them), valid as long as
/// the model; NULL if `index` is out of range.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbc_model_output_name(
    model: *const bbc_model,
    index: usize,
) -> *const c_char {
    tensor(model, Side::Outputs, index).map_or(ptr::null(), |(_, name)| name.as_ptr())
}

/// The shape of output `index`: `*rank` dimensions, valid as long as the model; NULL (and
/// rank 0) if `index` is out of range. `rank` may be NULL.
///
/// # Safety
/// `model` is NULL or a live model; `rank` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn bbc_model_output_shape(
    model: *const bbc_model,
    index: usize,
    rank: *mut usize,
) -> *const usize {
    shape(model, Side::Outputs, index, rank)
}

/// The number of floats output `index` holds (the product of its shape); 0 if out of range.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn bbc_model_output_len(model: *const bbc_model, index: usize) -> usize {
    tensor(model, Side::Outputs, index).map_or(0, |(t, _)| t.len())
}

/// `count` buffers of floats from C: `pointers[i]` holding `lens[i]` floats.
///
/// # Safety
/// `pointers` and `lens` are NULL or hold `count` entries; each pointer is NULL or points
/// to `lens[i]` floats that stay valid (and, for outputs, unaliased) during the call.
unsafe fn buffers<P: Copy>(
    pointers: *const P,
    lens: *const usize,
    count: usize,
    what: &str,
    start: impl Fn(P) -> *const f32,
) -> Result<Vec<(P, usize)>, Failure> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if pointers.is_null() || lens.is_null() {
        return Err(argument(format!("{what} or their lengths are NULL")));
    }
    let pointers = std::slice::from_raw_parts(pointers, count);
    let lens = std::slice::from_raw_parts(lens, count);
    for (i, (&p, &len)) in pointers.iter().zip(lens).enumerate() {
        let p = start(p);
        if len > 0 && p.is_null() {
            return Err(argument(format!("{what} {i} is NULL")));
        }
        if !p.is_aligned() {
            return Err(argument(format!("{what} {i} is not aligned for float")));
        }
    }
    Ok(pointers.iter().copied().zip(lens.iter().copied()).collect())
}

/// Runs one inference. `inputs[i]` holds `input_lens[i]` floats of input `i` (row-major,
/// in `bbc_model_input_name` order), `outputs[i]` receives `output_lens[i]` floats of output
/// `i`; every length must equal the tensor's `bbc_model_*_len`, and the counts the model's.
/// Buffers are read and written in place; output buffers must not overlap each other or an
/// input. Several threads may run the same model at once (on the cpu target the runs take
/// turns, each using all the model's threads).
///
/// # Safety
/// `model` is NULL or a live model; `inputs`/`input_lens` and `outputs`/`output_lens` are
/// NULL or arrays of `num_inputs` and `num_outputs` entries whose pointers are NULL or
/// point to that many floats; `err` as for `bbc_options_set_model`.
#[no_mangle]
pub unsafe extern "C" fn bbc_model_run(
    model: *const bbc_model,
    inputs: *const *const f32,
    input_lens: *const usize,
    num_inputs: usize,
    outputs: *const *mut f32,
    output_lens: *const usize,
    num_outputs: usize,
    err: *mut *mut bbc_error,
) -> bbc_status {
    status(err, || {
        let model = &object(model, "model")?.model;
        let ins = buffers(inputs, input_lens, num_inputs, "input", |p| p)?;
        let outs = buffers(outputs, output_lens, num_outputs, "output", |p| {
            p.cast_const()
        })?;
        let ins: Vec<&[f32]> = ins
            .into_iter()
            .map(|(p, len)| match len {
                0 => &[][..],
                _ => std::slice::from_raw_parts(p, len),
            })
            .collect();
        let mut outs: Vec<&mut [f32]> = outs
            .into_iter()
            .map(|(p, len)| match len {
                0 => &mut [][..],
                _ => std::slice::from_raw_parts_mut(p, len),
            })
            .collect();
        model.run_into(&ins, &mut outs).map_err(failure)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "bb 0.1;
model affine(k: float = 2.0) {
    input x: f32[N=3];
    output y = x * k + 1.0;
}";

    /// Calls `f` with an error slot and returns its result and the error's status and
    /// message (freed).
    fn with_err<T>(f: impl FnOnce(*mut *mut bbc_error) -> T) -> (T, bbc_status, String) {
        let mut err = ptr::null_mut();
        let value = f(&mut err);
        // SAFETY: `err` is NULL or an error just made by this library.
        unsafe {
            let status = bbc_error_status(err);
            let message = CStr::from_ptr(bbc_error_message(err))
                .to_string_lossy()
                .into_owned();
            bbc_error_free(err);
            (value, status, message)
        }
    }

    fn compile(opts: *const bbc_options) -> *mut bbc_model {
        let (model, status, message) = with_err(|err| unsafe {
            bbc_model_compile_str(
                c"affine.bb".as_ptr(),
                CString::new(SPEC).unwrap().as_ptr(),
                opts,
                err,
            )
        });
        assert_eq!(status, bbc_status::BBC_OK, "{message}");
        model
    }

    #[test]
    fn a_model_compiles_describes_itself_and_runs() {
        let opts = bbc_options_new();
        unsafe {
            let (s, ..) =
                with_err(|e| bbc_options_set_arg(opts, c"k".as_ptr(), c"3.0".as_ptr(), e));
            assert_eq!(s, bbc_status::BBC_OK);
            let (s, ..) = with_err(|e| bbc_options_set_dim(opts, c"N".as_ptr(), 4, e));
            assert_eq!(s, bbc_status::BBC_OK);
            let model = compile(opts);
            bbc_options_free(opts);
            assert_eq!(CStr::from_ptr(bbc_model_name(model)), c"affine");
            assert_eq!(
                (bbc_model_num_inputs(model), bbc_model_num_outputs(model)),
                (1, 1)
            );
            assert_eq!(CStr::from_ptr(bbc_model_input_name(model, 0)), c"x");
            assert_eq!(CStr::from_ptr(bbc_model_output_name(model, 0)), c"y");
            let mut rank = 9;
            let dims = bbc_model_input_shape(model, 0, &mut rank);
            assert_eq!(std::slice::from_raw_parts(dims, rank), [4]);
            assert!(bbc_model_output_shape(model, 1, &mut rank).is_null() && rank == 0);
            assert!(bbc_model_input_name(model, 1).is_null());
            assert_eq!(bbc_model_output_len(model, 0), 4);

            let x = [1.0f32, 2.0, 3.0, 4.0];
            let mut y = [0.0f32; 4];
            let (s, _, m) =
                with_err(|e| bbc_model_run(model, &x.as_ptr(), &4, 1, &y.as_mut_ptr(), &4, 1, e));
            assert_eq!(s, bbc_status::BBC_OK, "{m}");
            assert_eq!(y, [4.0, 7.0, 10.0, 13.0]);
            bbc_model_free(model);
        }
    }

    #[test]
    fn bad_arguments_are_errors_with_messages() {
        unsafe {
            let model = compile(ptr::null());
            let x = [0.0f32; 3];
            let mut y = [0.0f32; 3];
            let run =
                |ins: &[*const f32], in_lens: &[usize], outs: &[*mut f32], out_lens: &[usize]| {
                    with_err(|e| {
                        bbc_model_run(
                            model,
                            ins.as_ptr(),
                            in_lens.as_ptr(),
                            ins.len(),
                            outs.as_ptr(),
                            out_lens.as_ptr(),
                            outs.len(),
                            e,
                        )
                    })
                };
            let (s, _, m) = run(&[x.as_ptr()], &[2], &[y.as_mut_ptr()], &[3]);
            assert_eq!(s, bbc_status::BBC_ERROR_INPUT);
            assert!(
                m.contains("input `x` [3] has 3 values, but its buffer holds 2"),
                "{m}"
            );
            let (s, _, m) = run(&[], &[], &[y.as_mut_ptr()], &[3]);
            assert_eq!(s, bbc_status::BBC_ERROR_INPUT);
            assert!(m.contains("0 were given"), "{m}");
            let (s, _, m) = run(&[ptr::null()], &[3], &[y.as_mut_ptr()], &[3]);
            assert_eq!(s, bbc_status::BBC_ERROR_ARGUMENT);
            assert!(m.contains("input 0 is NULL"), "{m}");
            let (s, _, m) = with_err(|e| {
                bbc_model_run(
                    ptr::null(),
                    ptr::null(),
                    ptr::null(),
                    0,
                    ptr::null(),
                    ptr::null(),
                    0,
                    e,
                )
            });
            assert_eq!(s, bbc_status::BBC_ERROR_ARGUMENT);
            assert!(m.contains("model is NULL"), "{m}");
            // A NULL error slot is allowed: the status alone reports the failure.
            let s = bbc_model_run(
                model,
                ptr::null(),
                ptr::null(),
                1,
                ptr::null(),
                ptr::null(),
                1,
                ptr::null_mut(),
            );
            assert_eq!(s, bbc_status::BBC_ERROR_ARGUMENT);
            bbc_model_free(model);

            let (s, _, m) =
                with_err(|e| bbc_options_set_target(ptr::null_mut(), c"cpu".as_ptr(), e));
            assert!(
                s == bbc_status::BBC_ERROR_ARGUMENT && m.contains("opts is NULL"),
                "{m}"
            );
            let opts = bbc_options_new();
            let (s, _, m) = with_err(|e| bbc_options_set_target(opts, c"tpu".as_ptr(), e));
            assert!(
                s == bbc_status::BBC_ERROR_OPTIONS && m.contains("unknown target `tpu`"),
                "{m}"
            );
            let (s, _, m) = with_err(|e| bbc_options_set_model(opts, c"\xff".as_ptr(), e));
            assert!(
                s == bbc_status::BBC_ERROR_ARGUMENT && m.contains("not UTF-8"),
                "{m}"
            );
            let (s, _, _) = with_err(|e| bbc_options_set_opt_level(opts, 3, e));
            assert_eq!(s, bbc_status::BBC_ERROR_OPTIONS);
            bbc_options_free(opts);
        }
    }

    #[test]
    fn compile_errors_carry_the_diagnostics() {
        let opts = bbc_options_new();
        unsafe {
            with_err(|e| bbc_options_set_model(opts, c"afine".as_ptr(), e));
            let (model, s, m) = with_err(|e| {
                bbc_model_compile_str(
                    c"affine.bb".as_ptr(),
                    CString::new(SPEC).unwrap().as_ptr(),
                    opts,
                    e,
                )
            });
            assert!(model.is_null());
            assert_eq!(s, bbc_status::BBC_ERROR_SPEC);
            assert!(
                m.contains("E0206") && m.contains("did you mean `affine`"),
                "{m}"
            );
            let (model, s, m) =
                with_err(|e| bbc_model_compile_file(c"no/such.bb".as_ptr(), ptr::null(), e));
            assert!(model.is_null() && s == bbc_status::BBC_ERROR_SPEC, "{m}");
            assert!(m.contains("no/such.bb"), "{m}");
            bbc_options_free(opts);
        }
    }

    #[test]
    fn panics_become_internal_errors() {
        let (value, s, m) =
            with_err(|e| unsafe { guard(e, || -> Result<i32, Failure> { panic!("boom") }) });
        assert_eq!(value, Err(bbc_status::BBC_ERROR_INTERNAL));
        assert_eq!(s, bbc_status::BBC_ERROR_INTERNAL);
        assert!(m.contains("internal error") && m.contains("boom"), "{m}");
    }

    #[test]
    fn nothing_is_read_through_null() {
        unsafe {
            assert_eq!(CStr::from_ptr(bbc_error_message(ptr::null())), c"");
            assert_eq!(bbc_model_num_inputs(ptr::null()), 0);
            assert!(bbc_model_input_shape(ptr::null(), 0, ptr::null_mut()).is_null());
            bbc_model_free(ptr::null_mut());
            bbc_options_free(ptr::null_mut());
            bbc_error_free(ptr::null_mut());
        }
        let version = unsafe { CStr::from_ptr(bbc_version()) };
        assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
