/*
 * lb: the registry of native strategies. Each strategy lives in its own lb_<name>.c and exports
 * one const gw_lb_ops_t; this file only lists them, so adding a strategy is one line here and one
 * extern in lb.h. The tables are constant and shared by every thread; per-worker state is what
 * each strategy's `create` returns.
 */
#include "lb.h"

static const gw_lb_ops_t *const gw_lb_all[] = {
    &gw_lb_prequal,
    &gw_lb_round_robin,
    &gw_lb_weighted_round_robin,
    &gw_lb_random,
    &gw_lb_weighted_random,
    &gw_lb_least_conn,
    &gw_lb_p2c,
    &gw_lb_ewma,
    &gw_lb_least_score,
};

static const char *const gw_lb_all_names[] = {
    "prequal",
    "round_robin",
    "weighted_round_robin",
    "random",
    "weighted_random",
    "least_conn",
    "p2c",
    "ewma",
    "least_score",
    NULL,
};

_Static_assert(GW_ARRAY_LEN(gw_lb_all) + 1 == GW_ARRAY_LEN(gw_lb_all_names),
               "every strategy needs its name in gw_lb_all_names");

const gw_lb_ops_t *gw_lb_find(const char *name)
{
    if (name == NULL)
        return NULL;
    for (size_t i = 0; i < GW_ARRAY_LEN(gw_lb_all); i++) {
        if (strcmp(gw_lb_all[i]->name, name) == 0)
            return gw_lb_all[i];
    }
    return NULL;
}

const char *const *gw_lb_names(void)
{
    return gw_lb_all_names;
}
