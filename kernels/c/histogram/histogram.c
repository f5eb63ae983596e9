// A kernel written in C: how often each byte value occurs in the input.
//
// It shows a kernel in a language other than Rust on the same contract
// (kernels/wit/kernel.wit): wit-bindgen's C generator writes the glue
// (kernel.h, kernel.c), clang builds it for wasm32-wasi, and
// kernels/artifacts/build.rs makes the result a component.
//
// Params: none (empty or `{}`). Output: 256 counts, u64 little-endian, one
// per byte value. Progress each hundredth; a checkpoint every CHUNK bytes
// (the offset reached, then the counts so far), which `resume` continues.

#include <stdlib.h>
#include <string.h>

#include "kernel.h"

enum { VALUES = 256, CHUNK = 1 << 20, COUNTS_BYTES = VALUES * 8, CHECKPOINT_BYTES = 8 + COUNTS_BYTES };

static void put_u64(uint8_t *out, uint64_t v) {
    for (int i = 0; i < 8; i++) out[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *in) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | in[i];
    return v;
}

// Params are only allowed to say nothing: whitespace or an empty object.
static bool params_are_empty(const kernel_string_t *params) {
    char seen[3] = {0};
    size_t n = 0;
    for (size_t i = 0; i < params->len; i++) {
        uint8_t c = params->ptr[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
        if (n == 2) return false;
        seen[n++] = (char)c;
    }
    return n == 0 || strcmp(seen, "{}") == 0;
}

static bool fail(kernel_string_t *err, const char *message) {
    kernel_string_dup(err, message);
    return false;
}

bool exports_kernel_run(kernel_list_u8_t *input, kernel_string_t *params, kernel_list_u8_t *maybe_resume,
                        kernel_list_u8_t *ret, kernel_string_t *err) {
    if (!params_are_empty(params)) return fail(err, "this kernel takes no params: give {} or nothing");

    uint64_t counts[VALUES] = {0};
    size_t done = 0;
    if (maybe_resume != NULL) {
        if (maybe_resume->len != CHECKPOINT_BYTES) return fail(err, "checkpoint has the wrong size");
        done = (size_t)get_u64(maybe_resume->ptr);
        if (done > input->len) return fail(err, "checkpoint is past the input's end");
        for (int v = 0; v < VALUES; v++) counts[v] = get_u64(maybe_resume->ptr + 8 + 8 * v);
    }

    size_t hundredth = input->len / 100 > 0 ? input->len / 100 : 1;
    size_t next_report = (done / hundredth + 1) * hundredth;
    while (done < input->len) {
        size_t end = input->len - done > CHUNK ? done + CHUNK : input->len;
        for (size_t i = done; i < end; i++) counts[input->ptr[i]]++;
        done = end;
        if (done >= next_report || done == input->len) {
            idlemesh_kernel_host_progress((float)((double)done / (double)input->len));
            next_report = (done / hundredth + 1) * hundredth;
        }
        if (done < input->len) {
            uint8_t state[CHECKPOINT_BYTES];
            put_u64(state, done);
            for (int v = 0; v < VALUES; v++) put_u64(state + 8 + 8 * v, counts[v]);
            kernel_list_u8_t checkpoint = {state, sizeof state};
            idlemesh_kernel_host_checkpoint(&checkpoint);
        }
    }

    // The host frees what is returned (the glue's post-return), so it is malloc'd.
    uint8_t *out = malloc(COUNTS_BYTES);
    if (out == NULL) return fail(err, "out of memory for the output");
    for (int v = 0; v < VALUES; v++) put_u64(out + 8 * v, counts[v]);
    ret->ptr = out;
    ret->len = COUNTS_BYTES;
    // The arguments are this function's to free (the canonical ABI hands
    // them over); the instance ends with the task, but a kernel kit's
    // example should not teach leaks.
    kernel_list_u8_free(input);
    kernel_string_free(params);
    if (maybe_resume != NULL) kernel_list_u8_free(maybe_resume);
    return true;
}
