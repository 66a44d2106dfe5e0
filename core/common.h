/*
 * common: small types and helpers every module uses.
 *
 * A gw_slice_t is a borrowed view (pointer + length) into memory someone else owns; it is never
 * NUL-terminated unless the owner says so. Counters written by one thread and read by another
 * (metrics shards, backend in-flight counts) go through the GW_RELAXED_* helpers so the reader
 * never sees a torn value and the writer pays no lock prefix when it is the only writer.
 */
#ifndef GW_COMMON_H
#define GW_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct gw_slice {
    const char *p;
    size_t len;
} gw_slice_t;

#define GW_SLICE(s, n) ((gw_slice_t){(s), (n)})
#define GW_SLICE_LIT(s) ((gw_slice_t){(s), sizeof(s) - 1})
#define GW_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define GW_MIN(a, b) ((a) < (b) ? (a) : (b))
#define GW_MAX(a, b) ((a) > (b) ? (a) : (b))
#define GW_UNUSED(x) ((void)(x))

/* Single-writer counter increment: a plain load and store with relaxed atomics. Only the owning
 * thread may call it; other threads read with GW_RELAXED_LOAD. */
#define GW_RELAXED_LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define GW_RELAXED_STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define GW_COUNTER_ADD(x, v) GW_RELAXED_STORE((x), GW_RELAXED_LOAD(x) + (v))
#define GW_COUNTER_INC(x) GW_COUNTER_ADD((x), 1)
/* Multi-writer add (backend in-flight counts shared by workers). */
#define GW_ATOMIC_ADD(x, v) __atomic_add_fetch(&(x), (v), __ATOMIC_RELAXED)

/* Case-insensitive comparison of a slice with a NUL-terminated ASCII string. */
static inline bool gw_slice_ieq(gw_slice_t a, const char *b)
{
    size_t n = strlen(b);
    if (a.len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a.p[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y + 32);
        if (x != y)
            return false;
    }
    return true;
}

static inline bool gw_slice_eq(gw_slice_t a, gw_slice_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

/* xorshift64* generator; the state must never be 0. Pure modules take a pointer to one so tests
 * can seed it. */
static inline uint64_t gw_rand_next(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Uniform integer in [0, n); n must be > 0. */
static inline uint32_t gw_rand_below(uint64_t *state, uint32_t n)
{
    return (uint32_t)(((gw_rand_next(state) >> 32) * (uint64_t)n) >> 32);
}

/* The k-th smallest (0-based) of v[0..n-1], k < n; reorders v. Quickselect with a Hoare
 * partition around the middle element: O(n) expected, no allocation. */
static inline uint32_t gw_select_u32(uint32_t *v, uint32_t n, uint32_t k)
{
    int64_t lo = 0, hi = (int64_t)n - 1;
    while (lo < hi) {
        uint32_t pivot = v[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot)
                i++;
            while (v[j] > pivot)
                j--;
            if (i <= j) {
                uint32_t t = v[i];
                v[i++] = v[j];
                v[j--] = t;
            }
        }
        /* Now v[lo..j] <= pivot <= v[i..hi], and everything strictly between j and i is the
         * pivot. */
        if ((int64_t)k <= j)
            hi = j;
        else if ((int64_t)k >= i)
            lo = i;
        else
            return v[k];
    }
    return v[k];
}

#endif
