/*
 * Shared by the fuzz harnesses: the libFuzzer entry points and a check that fails the run the way
 * a sanitizer report does, so a broken invariant is a crash the fuzzer records.
 */
#ifndef GW_FUZZ_H
#define GW_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define GW_FUZZ_CHECK(cond)                                                                        \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Reads a structured input front to back; past the end every read gives zeros, so a harness
 * never has to check what is left. */
typedef struct gw_fuzz_in {
    const uint8_t *p;
    size_t len;
} gw_fuzz_in_t;

static inline uint8_t gw_fuzz_byte(gw_fuzz_in_t *in)
{
    if (in->len == 0)
        return 0;
    in->len--;
    return *in->p++;
}

/* The next `n` bytes (fewer at the end) as a span of the input. */
static inline size_t gw_fuzz_take(gw_fuzz_in_t *in, size_t n, const uint8_t **out)
{
    if (n > in->len)
        n = in->len;
    *out = in->p;
    in->p += n;
    in->len -= n;
    return n;
}

#endif
