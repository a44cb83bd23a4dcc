/* Runs a model compiled by `bbc compile --target cpu --symbol aot_test_model` on a raw
 * float32 input file (every input, in order) and writes its outputs the same way:
 *
 *   main WEIGHTS [INPUT OUTPUT [THREADS]]
 *
 * It prints each input and output with its name and shape (and stops there without INPUT),
 * and exits 1 with the runtime's message when loading or running fails. Built and run by
 * tests/aot.rs. */
#include <stdio.h>
#include <stdlib.h>

#include "model.h"

static void print_shape(const char *kind, const char *name, const size_t *shape, size_t rank) {
    printf("%s %s [", kind, name);
    for (size_t d = 0; d < rank; d++) {
        printf(d ? ", %zu" : "%zu", shape[d]);
    }
    printf("]\n");
}

static int fail(const char *what, bbcrt_error *err) {
    fprintf(stderr, "%s: %s\n", what, bbcrt_error_message(err));
    bbcrt_error_free(err);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2 && argc < 4) {
        fprintf(stderr, "usage: %s WEIGHTS [INPUT OUTPUT [THREADS]]\n", argv[0]);
        return 2;
    }
    size_t threads = argc > 4 ? strtoul(argv[4], NULL, 10) : 0;
    bbcrt_error *err = NULL;
    bbcrt_model *model = bbcrt_model_load(&aot_test_model, argv[1], threads, &err);
    if (!model) {
        return fail("load", err);
    }
    size_t n_in = bbcrt_model_num_inputs(model), n_out = bbcrt_model_num_outputs(model);
    if (n_in != AOT_TEST_MODEL_NUM_INPUTS || n_out != AOT_TEST_MODEL_NUM_OUTPUTS) {
        fprintf(stderr, "model.h and the model disagree\n");
        return 1;
    }
    if (argc == 2) {
        for (size_t i = 0; i < n_in; i++) {
            print_shape("input", bbcrt_model_input_name(model, i),
                        bbcrt_model_input_shape(model, i), bbcrt_model_input_rank(model, i));
        }
        for (size_t i = 0; i < n_out; i++) {
            print_shape("output", bbcrt_model_output_name(model, i),
                        bbcrt_model_output_shape(model, i), bbcrt_model_output_rank(model, i));
        }
        bbcrt_model_free(model);
        return 0;
    }
    const float **inputs = calloc(n_in, sizeof *inputs);
    float **outputs = calloc(n_out, sizeof *outputs);
    size_t *in_lens = calloc(n_in, sizeof *in_lens), *out_lens = calloc(n_out, sizeof *out_lens);
    FILE *in = fopen(argv[2], "rb");
    if (!in) {
        perror(argv[2]);
        return 1;
    }
    for (size_t i = 0; i < n_in; i++) {
        in_lens[i] = bbcrt_model_input_len(model, i);
        float *data = malloc(in_lens[i] * sizeof(float) + 1);
        if (fread(data, sizeof(float), in_lens[i], in) != in_lens[i]) {
            fprintf(stderr, "%s is too short\n", argv[2]);
            return 1;
        }
        inputs[i] = data;
    }
    fclose(in);
    for (size_t i = 0; i < n_out; i++) {
        out_lens[i] = bbcrt_model_output_len(model, i);
        outputs[i] = malloc(out_lens[i] * sizeof(float) + 1);
    }
    /* Twice: a model runs many times on one load. */
    for (int run = 0; run < 2; run++) {
        if (bbcrt_model_run(model, inputs, in_lens, outputs, out_lens, &err) != 0) {
            return fail("run", err);
        }
    }
    /* A wrong length is an error, not a crash. */
    if (n_in > 0) {
        size_t saved = in_lens[0];
        in_lens[0] = saved - 1;
        if (bbcrt_model_run(model, inputs, in_lens, outputs, out_lens, &err) == 0) {
            fprintf(stderr, "a short input was accepted\n");
            return 1;
        }
        printf("short input refused: %s\n", bbcrt_error_message(err));
        bbcrt_error_free(err);
        err = NULL;
        in_lens[0] = saved;
    }
    FILE *out = fopen(argv[3], "wb");
    if (!out) {
        perror(argv[3]);
        return 1;
    }
    for (size_t i = 0; i < n_out; i++) {
        fwrite(outputs[i], sizeof(float), out_lens[i], out);
        free(outputs[i]);
    }
    fclose(out);
    for (size_t i = 0; i < n_in; i++) {
        free((void *)inputs[i]);
    }
    free(inputs);
    free(outputs);
    free(in_lens);
    free(out_lens);
    bbcrt_model_free(model);
    return 0;
}
