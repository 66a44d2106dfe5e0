/*
 * health: see health.h. The counters are per backend, shared by all workers:
 *   fails            consecutive transport failures (reset by any success)
 *   ejected          1 while ejected (healthy is 0 then)
 *   ejected_until_ms when the main thread may re-admit it
 *   ejections        ejections in a row without a success in between (the backoff exponent)
 * The cap on ejections counts the ejected peers at the moment of deciding; two workers deciding
 * at the same instant could both pass the check, so the cap is enforced again with a CAS on the
 * backend's own flag and a recount after it: whichever pushes the count over the cap undoes its
 * own ejection.
 */
#include "health.h"

/* Ejected members among the peers; *members gets their number (slots that are not in the
 * upstream, see registry.h, count for neither). */
static size_t health_count_ejected(gw_backend_t *const *peers, size_t n, size_t *members)
{
    size_t k = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        if (!__atomic_load_n(&peers[i]->member, __ATOMIC_ACQUIRE))
            continue;
        m++;
        k += __atomic_load_n(&peers[i]->ejected, __ATOMIC_ACQUIRE);
    }
    *members = m;
    return k;
}

static bool health_over_cap(size_t ejected, size_t n, uint32_t max_percent)
{
    return ejected * 100 > (size_t)max_percent * n;
}

bool gw_health_on_failure(gw_backend_t *b, gw_backend_t *const *peers, size_t npeers,
                          const gw_health_cfg_t *h, uint64_t now_ms)
{
    uint32_t fails = __atomic_add_fetch(&b->fails, 1, __ATOMIC_ACQ_REL);
    if (h->max_fails == 0 || fails < h->max_fails)
        return false;
    if (__atomic_load_n(&b->ejected, __ATOMIC_ACQUIRE))
        return false;
    size_t members;
    size_t ejected = health_count_ejected(peers, npeers, &members);
    if (health_over_cap(ejected + 1, members, h->max_ejected_percent))
        return false;
    uint32_t zero = 0;
    if (!__atomic_compare_exchange_n(&b->ejected, &zero, 1, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return false;
    ejected = health_count_ejected(peers, npeers, &members);
    if (health_over_cap(ejected, members, h->max_ejected_percent)) {
        __atomic_store_n(&b->ejected, 0, __ATOMIC_RELEASE);
        return false;
    }
    uint32_t k = __atomic_fetch_add(&b->ejections, 1, __ATOMIC_ACQ_REL);
    uint64_t ms = h->eject_ms;
    for (uint32_t i = 0; i < k && ms < h->max_eject_ms; i++)
        ms *= 2;
    if (ms > h->max_eject_ms)
        ms = h->max_eject_ms;
    __atomic_store_n(&b->ejected_until_ms, now_ms + ms, __ATOMIC_RELEASE);
    __atomic_store_n(&b->healthy, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&b->fails, 0, __ATOMIC_RELEASE);
    return true;
}

void gw_health_on_success(gw_backend_t *b)
{
    if (__atomic_load_n(&b->fails, __ATOMIC_RELAXED))
        __atomic_store_n(&b->fails, 0, __ATOMIC_RELAXED);
    if (__atomic_load_n(&b->ejections, __ATOMIC_RELAXED) && !__atomic_load_n(&b->ejected, __ATOMIC_RELAXED))
        __atomic_store_n(&b->ejections, 0, __ATOMIC_RELAXED);
}

size_t gw_health_tick(gw_backend_t *const *all, size_t n, uint64_t now_ms)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        gw_backend_t *b = all[i];
        if (!__atomic_load_n(&b->ejected, __ATOMIC_ACQUIRE) ||
            __atomic_load_n(&b->ejected_until_ms, __ATOMIC_ACQUIRE) > now_ms)
            continue;
        __atomic_store_n(&b->ejected, 0, __ATOMIC_SEQ_CST);
        if (!__atomic_load_n(&b->down, __ATOMIC_SEQ_CST))
            __atomic_store_n(&b->healthy, 1, __ATOMIC_SEQ_CST);
        k++;
    }
    return k;
}

void gw_health_reset(gw_backend_t *b)
{
    __atomic_store_n(&b->fails, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&b->ejections, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&b->ejected_until_ms, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&b->ejected, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&b->down, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&b->healthy, 1, __ATOMIC_SEQ_CST);
}

void gw_health_adopt(gw_backend_t *b, const gw_backend_t *from)
{
    b->ejections = __atomic_load_n(&from->ejections, __ATOMIC_RELAXED);
    b->ejected_until_ms = __atomic_load_n(&from->ejected_until_ms, __ATOMIC_ACQUIRE);
    b->ejected = __atomic_load_n(&from->ejected, __ATOMIC_ACQUIRE);
    b->healthy = !b->ejected && !b->down;
}

bool gw_health_set_down(gw_backend_t *b, bool down)
{
    uint32_t was = __atomic_exchange_n(&b->down, down ? 1u : 0u, __ATOMIC_SEQ_CST);
    if (down) {
        __atomic_store_n(&b->healthy, 0, __ATOMIC_SEQ_CST);
    } else if (!__atomic_load_n(&b->ejected, __ATOMIC_SEQ_CST)) {
        __atomic_store_n(&b->healthy, 1, __ATOMIC_SEQ_CST);
        /* A worker may have ejected it between the load and the store: it stores healthy = 0
         * after setting ejected, but if its store came first, undo ours. */
        if (__atomic_load_n(&b->ejected, __ATOMIC_SEQ_CST))
            __atomic_store_n(&b->healthy, 0, __ATOMIC_SEQ_CST);
    }
    return was != (down ? 1u : 0u);
}
