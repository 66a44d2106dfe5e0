/*
 * arena: see arena.h. Blocks are singly linked, newest first; a request larger than a block gets
 * a block of its own size so big allocations never waste a partial block.
 */
#include "arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct gw_arena_block {
    gw_arena_block_t *next;
    size_t size; /* usable bytes after the header */
    size_t used;
    /* data follows, 16-byte aligned */
};

#define GW_ARENA_HDR ((sizeof(gw_arena_block_t) + 15) & ~(size_t)15)

void gw_arena_init(gw_arena_t *a, size_t block_size, size_t limit, gw_arena_cache_t *cache)
{
    a->head = NULL;
    a->block_size = block_size;
    a->limit = limit;
    a->total = 0;
    a->cache = cache;
}

void gw_arena_cache_trim(gw_arena_cache_t *cache, uint32_t keep)
{
    while (cache->n > keep) {
        gw_arena_block_t *b = cache->free;
        cache->free = b->next;
        cache->n--;
        free(b);
    }
}

/* Frees a block, or parks an ordinary one in the cache. */
static void arena_drop_block(gw_arena_t *a, gw_arena_block_t *b)
{
    a->total -= b->size;
    gw_arena_cache_t *c = a->cache;
    if (c && b->size == a->block_size && c->n < c->max) {
        b->next = c->free;
        c->free = b;
        c->n++;
        return;
    }
    free(b);
}

static gw_arena_block_t *arena_new_block(gw_arena_t *a, size_t size)
{
    if (a->limit && a->total + size > a->limit)
        return NULL;
    gw_arena_cache_t *c = a->cache;
    if (c && c->free && size == a->block_size) {
        gw_arena_block_t *cb = c->free;
        c->free = cb->next;
        c->n--;
        cb->used = 0;
        a->total += size;
        return cb;
    }
    gw_arena_block_t *b = malloc(GW_ARENA_HDR + size);
    if (!b)
        return NULL;
    b->size = size;
    b->used = 0;
    a->total += size;
    return b;
}

void *gw_arena_alloc(gw_arena_t *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    gw_arena_block_t *b = a->head;
    if (b && b->size - b->used >= n) {
        void *p = (char *)b + GW_ARENA_HDR + b->used;
        b->used += n;
        return p;
    }
    if (n > a->block_size / 2) {
        /* A big piece gets its own block, linked behind the current one so the current block's
         * free space stays usable. */
        gw_arena_block_t *big = arena_new_block(a, n);
        if (!big)
            return NULL;
        big->used = n;
        if (b) {
            big->next = b->next;
            b->next = big;
        } else {
            big->next = NULL;
            a->head = big;
        }
        return (char *)big + GW_ARENA_HDR;
    }
    gw_arena_block_t *nb = arena_new_block(a, a->block_size);
    if (!nb)
        return NULL;
    nb->next = b;
    a->head = nb;
    nb->used = n;
    return (char *)nb + GW_ARENA_HDR;
}

char *gw_arena_dup(gw_arena_t *a, const char *p, size_t n)
{
    char *d = gw_arena_alloc(a, n + 1);
    if (!d)
        return NULL;
    if (n)
        memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

void gw_arena_reset(gw_arena_t *a)
{
    gw_arena_block_t *keep = NULL;
    gw_arena_block_t *b = a->head;
    while (b) {
        gw_arena_block_t *next = b->next;
        if (!keep && b->size == a->block_size)
            keep = b;
        else
            arena_drop_block(a, b);
        b = next;
    }
    if (keep) {
        keep->next = NULL;
        keep->used = 0;
    }
    a->head = keep;
}

void gw_arena_free(gw_arena_t *a)
{
    gw_arena_block_t *b = a->head;
    while (b) {
        gw_arena_block_t *next = b->next;
        arena_drop_block(a, b);
        b = next;
    }
    a->head = NULL;
    a->total = 0;
}
