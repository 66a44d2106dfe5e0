/*
 * arena: a per-request bump allocator (nginx's pool, reduced). A connection owns one arena and
 * resets it between requests; the first block is kept across resets, so a request that fits in
 * it costs no malloc at all. Memory from an arena is freed only by gw_arena_reset/free, never
 * one piece at a time. Allocation sized by peer input must use gw_arena_alloc and check NULL.
 */
#ifndef GW_ARENA_H
#define GW_ARENA_H

#include <stddef.h>
#include <stdint.h>

typedef struct gw_arena_block gw_arena_block_t;

/* Ordinary blocks that arenas gave back, for reuse by other arenas of the same thread (a
 * worker's idle connections hold no block at all). Not thread-safe: one per worker. */
typedef struct gw_arena_cache {
    gw_arena_block_t *free;
    uint32_t n;
    uint32_t max;
} gw_arena_cache_t;

typedef struct gw_arena {
    gw_arena_block_t *head;  /* current block (newest first) */
    size_t block_size;       /* size of ordinary blocks */
    size_t limit;            /* max bytes in all blocks; 0: none */
    size_t total;            /* bytes held in blocks */
    gw_arena_cache_t *cache; /* where ordinary blocks come from and go back to; may be NULL */
} gw_arena_t;

/** Prepares an empty arena; no memory is taken until the first allocation. `cache` (may be
 * NULL) must only hold blocks of `block_size` and outlive the arena. */
void gw_arena_init(gw_arena_t *a, size_t block_size, size_t limit, gw_arena_cache_t *cache);

/** Frees the blocks held by the cache beyond the first `keep` (0: all of them). */
void gw_arena_cache_trim(gw_arena_cache_t *cache, uint32_t keep);

/** Returns `n` bytes aligned to 16, or NULL when the limit is reached or malloc fails. */
void *gw_arena_alloc(gw_arena_t *a, size_t n);

/** Copies `n` bytes into the arena (NUL-terminated as a courtesy). NULL on failure. */
char *gw_arena_dup(gw_arena_t *a, const char *p, size_t n);

/** Frees every block but the first ordinary one, which is kept for the next request. */
void gw_arena_reset(gw_arena_t *a);

/** Gives every block back (ordinary ones to the cache, up to its max). The arena stays usable. */
void gw_arena_free(gw_arena_t *a);

#endif
