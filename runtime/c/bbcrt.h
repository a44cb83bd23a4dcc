/* The bbc runtime's C library (libbbcrt): loads and runs models compiled ahead of time
 * with `bbc compile SPEC --target cpu -o DIR`. Generated from runtime/c/src/lib.rs by cbindgen:
 * do not edit; `BBCRT_WRITE_HEADER=1 cargo test -p bbc-rt header` regenerates it. */

#ifndef BBCRT_H
#define BBCRT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/**
 * A compiled model's descriptor, defined by its object file (declared in its `model.h`).
 */
typedef struct bbcrt_descriptor bbcrt_descriptor;

/**
 * An error: a message.
 */
typedef struct bbcrt_error bbcrt_error;

/**
 * A loaded model. Not for concurrent use: one run at a time (each run uses every thread
 * of the model's pool).
 */
typedef struct bbcrt_model bbcrt_model;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * Loads the model `descriptor` describes (`&bbc_model_<name>` from its `model.h`) with
 * the weights file at `weights_path` (its `weights.bin`, checked by size and digest), on
 * `threads` threads (0: one per core). Returns NULL on failure, with the reason in
 * `*error` (a CPU without the features the code was compiled for, a missing, truncated or
 * foreign weights file, ...).
 *
 * # Safety
 *
 * `descriptor` must be a descriptor from an object file `bbc compile --target cpu` wrote
 * (or NULL); `weights_path` a NUL-terminated string (or NULL); `error` NULL or writable.
 */
struct bbcrt_model *bbcrt_model_load(const struct bbcrt_descriptor *descriptor,
                                     const char *weights_path,
                                     size_t threads,
                                     struct bbcrt_error **error);

/**
 * The number of inputs (0 for NULL).
 *
 * # Safety
 *
 * `model` is NULL or a live model.
 */
size_t bbcrt_model_num_inputs(const struct bbcrt_model *model);

/**
 * The number of outputs (0 for NULL).
 *
 * # Safety
 *
 * `model` is NULL or a live model.
 */
size_t bbcrt_model_num_outputs(const struct bbcrt_model *model);

/**
 * The name of input `i` (valid while the model lives), or NULL if there is none.
 *
 * # Safety
 *
 * `model` is NULL or a live model.
 */
const char *bbcrt_model_input_name(const struct bbcrt_model *model, size_t i);

/**
 * The name of output `i` (valid while the model lives), or NULL if there is none.
 *
 * # Safety
 *
 * `model` is NULL or a live model.
 */
const char *bbcrt_model_output_name(const struct bbcrt_model *model, size_t i);

/**
 * The rank of input `i` (0 if there is none).
 *
 * # Safety
 *
 * `model` is NULL or a live model.
 */
size_t bbcrt_model_input_rank(const struct bbcrt_model *model, size_t i);

/**
 * The rank of output `i` (0 if there is none).
 *
 * # Safety
 *
 * `model` is NULL or a live model.
 */
size_t bbcrt_model_output_rank(const struct bbcrt_model *model, size_t i);

/**
 * The shape of input `i`: its rank's sizes (valid while the model lives), or NULL.
 *
 * # Safety
 *
 * `model` is NULL or a live model.
 */
const size_t *bbcrt_model_input_shape(const struct bbcrt_model *model, size_t i);

/**
 * The shape of output `i`: its rank's sizes (valid while the model lives), or NULL.
 *
 * # Safety
 *
 * `model` is NULL or a live model.
 */
const size_t *bbcrt_model_output_shape(const struct bbcrt_model *model, size_t i);

/**
 * The element count of input `i` (0 if there is none).
 *
 * # Safety
 *
 * `model` is NULL or a live model.
 */
size_t bbcrt_model_input_len(const struct bbcrt_model *model, size_t i);

/**
 * The element count of output `i` (0 if there is none).
 *
 * # Safety
 *
 * `model` is NULL or a live model.
 */
size_t bbcrt_model_output_len(const struct bbcrt_model *model, size_t i);

/**
 * Runs one inference: `inputs[i]` holds `input_lens[i]` floats of input `i` (row-major,
 * every input in order), and output `i` is written to `outputs[i]`, which has room for
 * `output_lens[i]` floats. Lengths must match the model's. Returns 0, or -1 with the
 * reason in `*error`. Outputs must not overlap inputs.
 *
 * # Safety
 *
 * `model` is NULL or a live model not used by another thread meanwhile; the arrays hold
 * one entry per input (output), each pointing at its length's floats; `error` is NULL or
 * writable.
 */
int bbcrt_model_run(struct bbcrt_model *model,
                    const float *const *inputs,
                    const size_t *input_lens,
                    float *const *outputs,
                    const size_t *output_lens,
                    struct bbcrt_error **error);

/**
 * The message of `error` (valid until it is freed), or NULL for NULL.
 *
 * # Safety
 *
 * `error` is NULL or a live error.
 */
const char *bbcrt_error_message(const struct bbcrt_error *error);

/**
 * Frees an error (NULL is ignored).
 *
 * # Safety
 *
 * `error` is NULL or an error from this library, not freed before.
 */
void bbcrt_error_free(struct bbcrt_error *error);

/**
 * Frees a model and its threads (NULL is ignored).
 *
 * # Safety
 *
 * `model` is NULL or a model from [`bbcrt_model_load`], not freed before.
 */
void bbcrt_model_free(struct bbcrt_model *model);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* BBCRT_H */
