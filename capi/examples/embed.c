/*
 * embed.c: compile a model of a spec with the bbc C API, run it on an input and print its
 * outputs.
 *
 *   cargo build -p bbc-capi
 *   cc -std=c99 -I capi capi/examples/embed.c -L target/debug -lbbc \
 *      -Wl,-rpath,target/debug -o embed
 *   ./embed specs/convnext.bb convnext_test H=32 W=32 [weights.safetensors]
 *
 * NAME=VALUE binds a size parameter of the model's input; weights are initialised with
 * seed 0 unless a .safetensors checkpoint is given. Input element j is ((j % 23) - 11) / 16,
 * exactly representable, so any program can feed the same values. Prints one line per
 * input (name, shape) and per output (name, shape, every value).
 */
#include "bbc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Prints `err`'s message (diagnostics come with their source snippets) and frees it. */
static int fail(bbc_error *err) {
    fprintf(stderr, "%s\n", bbc_error_message(err));
    bbc_error_free(err);
    return 1;
}

static void print_shape(const size_t *dims, size_t rank) {
    printf("[");
    for (size_t d = 0; d < rank; d++) printf(d ? ", %zu" : "%zu", dims[d]);
    printf("]");
}

/* Applies one command-line option: NAME=VALUE or a checkpoint path. */
static bbc_status apply(bbc_options *opts, const char *arg, bbc_error **err) {
    const char *eq = strchr(arg, '=');
    if (eq == NULL) return bbc_options_set_weights_file(opts, arg, err);
    char name[64];
    size_t n = (size_t)(eq - arg);
    if (n >= sizeof name) n = sizeof name - 1;
    memcpy(name, arg, n);
    name[n] = '\0';
    return bbc_options_set_dim(opts, name, strtoll(eq + 1, NULL, 10), err);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s SPEC MODEL [NAME=VALUE ...] [WEIGHTS.safetensors]\n", argv[0]);
        return 2;
    }
    bbc_error *err = NULL;
    bbc_options *opts = bbc_options_new();
    if (bbc_options_set_model(opts, argv[2], &err) != BBC_OK) return fail(err);
    for (int i = 3; i < argc; i++) {
        if (apply(opts, argv[i], &err) != BBC_OK) return fail(err);
    }
    bbc_model *model = bbc_model_compile_file(argv[1], opts, &err);
    bbc_options_free(opts);
    if (model == NULL) return fail(err);

    size_t num_inputs = bbc_model_num_inputs(model);
    size_t num_outputs = bbc_model_num_outputs(model);
    float **inputs = calloc(num_inputs, sizeof *inputs);
    float **outputs = calloc(num_outputs, sizeof *outputs);
    size_t *input_lens = calloc(num_inputs, sizeof *input_lens);
    size_t *output_lens = calloc(num_outputs, sizeof *output_lens);
    if (!inputs || !outputs || !input_lens || !output_lens) return fprintf(stderr, "out of memory\n"), 1;
    for (size_t i = 0; i < num_inputs; i++) {
        size_t rank;
        const size_t *dims = bbc_model_input_shape(model, i, &rank);
        input_lens[i] = bbc_model_input_len(model, i);
        inputs[i] = malloc(input_lens[i] * sizeof(float));
        if (inputs[i] == NULL && input_lens[i] > 0) return fprintf(stderr, "out of memory\n"), 1;
        for (size_t j = 0; j < input_lens[i]; j++) inputs[i][j] = (float)((int)(j % 23) - 11) / 16.0f;
        printf("input %s ", bbc_model_input_name(model, i));
        print_shape(dims, rank);
        printf("\n");
    }
    for (size_t i = 0; i < num_outputs; i++) {
        output_lens[i] = bbc_model_output_len(model, i);
        outputs[i] = malloc(output_lens[i] * sizeof(float));
        if (outputs[i] == NULL && output_lens[i] > 0) return fprintf(stderr, "out of memory\n"), 1;
    }

    bbc_status status = bbc_model_run(model, (const float *const *)inputs, input_lens, num_inputs,
                                      outputs, output_lens, num_outputs, &err);
    int code = 0;
    if (status != BBC_OK) {
        code = fail(err);
    } else {
        for (size_t i = 0; i < num_outputs; i++) {
            size_t rank;
            const size_t *dims = bbc_model_output_shape(model, i, &rank);
            printf("output %s ", bbc_model_output_name(model, i));
            print_shape(dims, rank);
            printf(":");
            for (size_t j = 0; j < output_lens[i]; j++) printf(" %.9g", outputs[i][j]);
            printf("\n");
        }
    }

    for (size_t i = 0; i < num_inputs; i++) free(inputs[i]);
    for (size_t i = 0; i < num_outputs; i++) free(outputs[i]);
    free(inputs);
    free(outputs);
    free(input_lens);
    free(output_lens);
    bbc_model_free(model);
    return code;
}
