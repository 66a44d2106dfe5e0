/*
 * hedge: the budget and the delay of request hedging (see hedge.h). Pure: no I/O, no clock.
 */
#include "hedge.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

const char *gw_hedge_outcome_name(gw_hedge_outcome_t o)
{
    static const char *const names[GW_HEDGE_OUTCOMES] = {
        "sent", "won", "lost", "failed", "skipped_budget", "skipped_no_backend"};
    return (unsigned)o < GW_HEDGE_OUTCOMES ? names[o] : "unknown";
}

int gw_hedge_init(gw_hedge_t *h, const gw_hedge_cfg_t *cfg)
{
    memset(h, 0, sizeof *h);
    h->cfg = cfg;
    h->delay_ms =
        cfg->after_quantile > 0 ? GW_HEDGE_COLD_MS : GW_MAX(cfg->after_ms, GW_HEDGE_MIN_MS);
    if (cfg->after_quantile > 0) {
        h->window = calloc(GW_HEDGE_WINDOW, sizeof *h->window);
        if (!h->window)
            return -ENOMEM;
    }
    return 0;
}

void gw_hedge_free(gw_hedge_t *h)
{
    free(h->window);
    h->window = NULL;
}

void gw_hedge_earn(gw_hedge_t *h)
{
    uint32_t cap = GW_HEDGE_BURST * 1000;
    h->tokens_milli = GW_MIN(h->tokens_milli + h->cfg->budget_percent * 10, cap);
}

bool gw_hedge_take(gw_hedge_t *h)
{
    if (h->tokens_milli < 1000)
        return false;
    h->tokens_milli -= 1000;
    return true;
}

void gw_hedge_refund(gw_hedge_t *h)
{
    h->tokens_milli = GW_MIN(h->tokens_milli + 1000, (uint32_t)GW_HEDGE_BURST * 1000);
}

/* The q-quantile of the window (nearest rank), as a delay in whole ms rounded up. */
static uint32_t hedge_quantile_ms(const gw_hedge_t *h)
{
    uint32_t v[GW_HEDGE_WINDOW];
    memcpy(v, h->window, h->nsamples * sizeof *v);
    double rank = ceil(h->cfg->after_quantile * h->nsamples);
    uint32_t k = rank < 1 ? 0 : (uint32_t)rank - 1;
    uint32_t us = gw_select_u32(v, h->nsamples, GW_MIN(k, h->nsamples - 1));
    return GW_MAX((us + 999) / 1000, (uint32_t)GW_HEDGE_MIN_MS);
}

void gw_hedge_observe(gw_hedge_t *h, uint64_t latency_us)
{
    if (!h->window)
        return;
    h->window[h->next] = (uint32_t)GW_MIN(latency_us, (uint64_t)UINT32_MAX);
    h->next = (h->next + 1) % GW_HEDGE_WINDOW;
    if (h->nsamples < GW_HEDGE_WINDOW)
        h->nsamples++;
    if (++h->fresh >= GW_HEDGE_RECOMPUTE && h->nsamples >= GW_HEDGE_MIN_SAMPLES) {
        h->fresh = 0;
        h->delay_ms = hedge_quantile_ms(h);
    }
}

uint32_t gw_hedge_delay_ms(const gw_hedge_t *h)
{
    return h->delay_ms;
}
