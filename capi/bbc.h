/*
 * bbc.h: the C API of bbc, a compiler for neural-network backbones described in .bb specs.
 *
 * Compile a model once (bbc_model_compile_file), run it many times (bbc_model_run) from any
 * number of threads; every tensor is float32, row-major. Calls that can fail return a
 * bbc_status (or NULL) and, when `err` is not NULL, set *err to an error to read with
 * bbc_error_message and free with bbc_error_free. Link with -lbbc.
 *
 * Generated from capi/src/lib.rs by cbindgen; do not edit.
 */

#ifndef BBC_H
#define BBC_H

#include <stddef.h>
#include <stdint.h>

// What a call returned: `BBC_OK`, or the kind of error its `bbc_error` describes.
typedef enum bbc_status {
  // Success.
  BBC_OK = 0,
  // A NULL pointer, a string that is not UTF-8, an index out of range.
  BBC_ERROR_ARGUMENT = 1,
  // The spec cannot be read or parsed, or the model cannot be built from it; the message
  // holds the compiler's diagnostics with their source snippets.
  BBC_ERROR_SPEC = 2,
  // The weights do not fit the model, or the checkpoint cannot be read.
  BBC_ERROR_WEIGHTS = 3,
  // An invalid option: an unknown target or pass, an optimisation level above 2, or an
  // option the chosen target does not have.
  BBC_ERROR_OPTIONS = 4,
  // The model needs more memory than this machine has available.
  BBC_ERROR_MEMORY = 5,
  // The buffers given to a run do not match the model's inputs or outputs.
  BBC_ERROR_INPUT = 6,
  // The model cannot be compiled for its target.
  BBC_ERROR_COMPILE = 7,
  // No device for a GPU target (no Vulkan adapter, no CUDA driver).
  BBC_ERROR_GPU_UNAVAILABLE = 8,
  // An inference failed on its device.
  BBC_ERROR_RUN = 9,
  // A bug in bbc, caught before it could cross into C.
  BBC_ERROR_INTERNAL = 10,
} bbc_status;

// An error: its status and a message (UTF-8, possibly several lines). Free it with
// `bbc_error_free`.
typedef struct bbc_error bbc_error;

// A compiled model with its weights. Create with `bbc_model_compile_file` or
// `bbc_model_compile_str`, free with `bbc_model_free`. A model may be run from several
// threads at once.
typedef struct bbc_model bbc_model;

// Compile options: which model of the spec, its size parameters and arguments, the
// optimisation level, the target, the threads and the weights. Create with
// `bbc_options_new`, free with `bbc_options_free`.
typedef struct bbc_options bbc_options;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// The version of bbc, e.g. `"0.1.0"`; a static string.
const char *bbc_version(void);

// The message of `err` (NUL-terminated UTF-8, possibly several lines), valid until
// `bbc_error_free(err)`; `""` for NULL.
//
// # Safety
// `err` is NULL or an error from this library that has not been freed.
const char *bbc_error_message(const struct bbc_error *err);

// The status of `err`; `BBC_OK` for NULL.
//
// # Safety
// `err` is NULL or an error from this library that has not been freed.
enum bbc_status bbc_error_status(const struct bbc_error *err);

// Frees an error; NULL is ignored.
//
// # Safety
// `err` is NULL or an error from this library that has not been freed.
void bbc_error_free(struct bbc_error *err);

// New options with the defaults: the spec's last model with its default sizes, `-O2`,
// the cpu target on all cores, weights initialised with seed 0. NULL only on an internal
// error.
struct bbc_options *bbc_options_new(void);

// Frees options; NULL is ignored. Models compiled with them are not affected.
//
// # Safety
// `opts` is NULL or options from `bbc_options_new` that have not been freed.
void bbc_options_free(struct bbc_options *opts);

// Builds the model or model variant `name` of the spec instead of its last one.
//
// # Safety
// `opts` is NULL or live options; `name` is NULL or a NUL-terminated string; `err` is NULL
// or points to a `bbc_error*`, which is set to NULL on success and to a new error (free it
// with `bbc_error_free`) on failure. The same holds for every function taking these.
enum bbc_status bbc_options_set_model(struct bbc_options *opts,
                                      const char *name,
                                      struct bbc_error **err);

// Binds a size parameter (a named dimension of an `input`, such as `H` in
// `input x: f32[B=1, 3, H=224, W=224]`) to `value`; binding it again replaces the value.
//
// # Safety
// As for `bbc_options_set_model`.
enum bbc_status bbc_options_set_dim(struct bbc_options *opts,
                                    const char *name,
                                    int64_t value,
                                    struct bbc_error **err);

// Sets a parameter of the model itself to `value`, a literal as the spec would write it
// (`3`, `1.5`, `true`, `"avg"`, `[1, 2]`).
//
// # Safety
// As for `bbc_options_set_model`; `value` likewise.
enum bbc_status bbc_options_set_arg(struct bbc_options *opts,
                                    const char *name,
                                    const char *value,
                                    struct bbc_error **err);

// The optimisation level: 0 none, 1 cleanup, 2 everything (the default; 0 on the
// interpreter).
//
// # Safety
// As for `bbc_options_set_model`.
enum bbc_status bbc_options_set_opt_level(struct bbc_options *opts,
                                          uint32_t level,
                                          struct bbc_error **err);

// Threads of the cpu target, the calling thread included; 0 means all cores.
//
// # Safety
// As for `bbc_options_set_model`.
enum bbc_status bbc_options_set_threads(struct bbc_options *opts,
                                        size_t threads,
                                        struct bbc_error **err);

// Where the model runs: `"cpu"` (native code, the default), `"interp"` (the reference
// interpreter), `"gpu"` (Vulkan) or `"cuda"`.
//
// # Safety
// As for `bbc_options_set_model`.
enum bbc_status bbc_options_set_target(struct bbc_options *opts,
                                       const char *target,
                                       struct bbc_error **err);

// Loads the weights from this safetensors checkpoint (checked against the model first).
//
// # Safety
// As for `bbc_options_set_model`; `path` likewise.
enum bbc_status bbc_options_set_weights_file(struct bbc_options *opts,
                                             const char *path,
                                             struct bbc_error **err);

// Initialises the weights with PyTorch's defaults from `seed` (the default, with seed 0).
//
// # Safety
// As for `bbc_options_set_model`.
enum bbc_status bbc_options_set_seed(struct bbc_options *opts,
                                     uint64_t seed,
                                     struct bbc_error **err);

// Loads the spec at `path` (and its imports) and compiles a model of it with `opts` (NULL
// for the defaults). Returns NULL on failure, with `*err` set.
//
// # Safety
// `path` is NULL or a NUL-terminated string; `opts` is NULL or live options; `err` as for
// `bbc_options_set_model`.
struct bbc_model *bbc_model_compile_file(const char *path,
                                         const struct bbc_options *opts,
                                         struct bbc_error **err);

// Compiles a model of the spec text `source`; `name` is the file name diagnostics show, and
// imports are read relative to it. Returns NULL on failure, with `*err` set.
//
// # Safety
// As for `bbc_model_compile_file`; `name` and `source` are NULL or NUL-terminated strings.
struct bbc_model *bbc_model_compile_str(const char *name,
                                        const char *source,
                                        const struct bbc_options *opts,
                                        struct bbc_error **err);

// Frees a model; NULL is ignored. No run of it may be in progress.
//
// # Safety
// `model` is NULL or a model from this library that has not been freed.
void bbc_model_free(struct bbc_model *model);

// The model's name in the spec, valid as long as the model; `""` for NULL.
//
// # Safety
// `model` is NULL or a live model.
const char *bbc_model_name(const struct bbc_model *model);

// The number of inputs; 0 for NULL.
//
// # Safety
// `model` is NULL or a live model.
size_t bbc_model_num_inputs(const struct bbc_model *model);

// The name of input `index` (in the order `bbc_model_run` takes them), valid as long as the
// model; NULL if `index` is out of range.
//
// # Safety
// `model` is NULL or a live model.
const char *bbc_model_input_name(const struct bbc_model *model, size_t index);

// The shape of input `index`: `*rank` dimensions, valid as long as the model; NULL (and
// rank 0) if `index` is out of range. `rank` may be NULL.
//
// # Safety
// `model` is NULL or a live model; `rank` is NULL or writable.
const size_t *bbc_model_input_shape(const struct bbc_model *model, size_t index, size_t *rank);

// The number of floats input `index` holds (the product of its shape); 0 if out of range.
//
// # Safety
// `model` is NULL or a live model.
size_t bbc_model_input_len(const struct bbc_model *model, size_t index);

// The number of outputs; 0 for NULL.
//
// # Safety
// `model` is NULL or a live model.
size_t bbc_model_num_outputs(const struct bbc_model *model);

// The name of output `index` (in the order `bbc_model_run` writes them), valid as long as
// the model; NULL if `index` is out of range.
//
// # Safety
// `model` is NULL or a live model.
const char *bbc_model_output_name(const struct bbc_model *model, size_t index);

// The shape of output `index`: `*rank` dimensions, valid as long as the model; NULL (and
// rank 0) if `index` is out of range. `rank` may be NULL.
//
// # Safety
// `model` is NULL or a live model; `rank` is NULL or writable.
const size_t *bbc_model_output_shape(const struct bbc_model *model, size_t index, size_t *rank);

// The number of floats output `index` holds (the product of its shape); 0 if out of range.
//
// # Safety
// `model` is NULL or a live model.
size_t bbc_model_output_len(const struct bbc_model *model, size_t index);

// Runs one inference. `inputs[i]` holds `input_lens[i]` floats of input `i` (row-major,
// in `bbc_model_input_name` order), `outputs[i]` receives `output_lens[i]` floats of output
// `i`; every length must equal the tensor's `bbc_model_*_len`, and the counts the model's.
// Buffers are read and written in place; output buffers must not overlap each other or an
// input. Several threads may run the same model at once (on the cpu target the runs take
// turns, each using all the model's threads).
//
// # Safety
// `model` is NULL or a live model; `inputs`/`input_lens` and `outputs`/`output_lens` are
// NULL or arrays of `num_inputs` and `num_outputs` entries whose pointers are NULL or
// point to that many floats; `err` as for `bbc_options_set_model`.
enum bbc_status bbc_model_run(const struct bbc_model *model,
                              const float *const *inputs,
                              const size_t *input_lens,
                              size_t num_inputs,
                              float *const *outputs,
                              const size_t *output_lens,
                              size_t num_outputs,
                              struct bbc_error **err);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* BBC_H */
