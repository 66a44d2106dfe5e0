/*
 * arena: a per-request bump allocator (nginx's pool, reduced). A connection owns one arena and
 * resets it between requests; the first block is kept across resets, so a request that fits in
 * it costs no malloc at all. Memory from an arena is freed only by gw_arena_reset/free, never
 * one piece at a time. Allocation sized by peer input must use gw_arena_alloc and check NULL.
 */
#ifndef GW_ARENA_H
#define GW_ARENA_H

#include <stddef.h>

typedef struct gw_arena_block gw_arena_block_t;

typedef struct gw_arena {
    gw_arena_block_t *head;  /* current block (newest first) */
    size_t block_size;       /* size of ordinary blocks */
    size_t limit;            /* max bytes in all blocks; 0: none */
    size_t total;            /* bytes held in blocks */
} gw_arena_t;

/** Prepares an empty arena; no memory is taken until the first allocation. */
void gw_arena_init(gw_arena_t *a, size_t block_size, size_t limit);

/** Returns `n` bytes aligned to 16, or NULL when the limit is reached or malloc fails. */
void *gw_arena_alloc(gw_arena_t *a, size_t n);

/** Copies `n` bytes into the arena (NUL-terminated as a courtesy). NULL on failure. */
char *gw_arena_dup(gw_arena_t *a, const char *p, size_t n);

/** Frees every block but the first ordinary one, which is kept for the next request. */
void gw_arena_reset(gw_arena_t *a);

/** Frees everything. The arena can be used again after gw_arena_init. */
void gw_arena_free(gw_arena_t *a);

#endif
