/*
 * status: see status.h. Built with cJSON: a scrape is rare and small, so clarity wins over speed.
 */
#include "status.h"

#include <cjson/cJSON.h>
#include <string.h>

#include "prequal.h"
#include "registry.h"

static cJSON *status_backend(const gw_admin_source_t *src, const gw_upstream_cfg_t *uc, uint32_t k,
                             bool prequal, uint64_t now_ms)
{
    const gw_backend_t *b = src->backends[gw_upstream_slot_gindex(uc, k)];
    const gw_backend_cfg_t *bc = b->cfg;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", k + 1);
    cJSON_AddStringToObject(o, "url", bc->url);
    cJSON_AddStringToObject(o, "source", b->registered ? "registered" : "static");
    cJSON_AddBoolToObject(o, "member", __atomic_load_n(&b->member, __ATOMIC_ACQUIRE) != 0);
    int64_t expires = src->registry ? gw_registry_expires_in(src->registry, bc->gindex, now_ms) : -1;
    if (expires >= 0)
        cJSON_AddNumberToObject(o, "expires_in_ms", (double)expires);
    else
        cJSON_AddNullToObject(o, "expires_in_ms");
    cJSON_AddNumberToObject(o, "weight", GW_RELAXED_LOAD(bc->weight));
    cJSON_AddBoolToObject(o, "healthy", GW_RELAXED_LOAD(b->healthy) != 0);
    cJSON_AddBoolToObject(o, "ejected", GW_RELAXED_LOAD(b->ejected) != 0);
    cJSON_AddBoolToObject(o, "down", GW_RELAXED_LOAD(b->down) != 0);
    cJSON_AddNumberToObject(o, "in_flight", GW_RELAXED_LOAD(b->inflight));
    cJSON_AddNumberToObject(o, "latency_ewma_ms", (double)GW_RELAXED_LOAD(b->latency_ewma_us) / 1000.0);
    cJSON_AddNumberToObject(o, "consecutive_failures", GW_RELAXED_LOAD(b->fails));
    if (prequal && src->nshards > 0) {
        uint8_t m = GW_RELAXED_LOAD(src->shards[0]->prequal_mode[bc->gindex]);
        cJSON_AddStringToObject(o, "probe_mode", gw_prequal_mode_name((gw_prequal_mode_t)m));
    }
    return o;
}

static cJSON *status_pool(const gw_admin_source_t *src, size_t u, uint64_t now_ms)
{
    const gw_upstream_cfg_t *uc = &src->cfg->upstreams[u];
    gw_pq_snapshot_t *snap = &src->shards[0]->prequal_snap[u];
    cJSON *o = cJSON_CreateObject();
    cJSON *pool = cJSON_AddArrayToObject(o, "pool");
    uv_mutex_lock(&snap->lock);
    for (size_t k = 0; k < snap->n; k++) {
        const gw_prequal_entry_info_t *e = &snap->entries[k];
        cJSON *eo = cJSON_CreateObject();
        cJSON_AddStringToObject(eo, "backend", e->backend < gw_upstream_nslots(uc)
                                                   ? src->backends[gw_upstream_slot_gindex(uc, (uint32_t)e->backend)]->cfg->url
                                                   : "?");
        cJSON_AddNumberToObject(eo, "rif", e->rif);
        cJSON_AddNumberToObject(eo, "latency_ms", (double)e->latency_us / 1000.0);
        cJSON_AddNumberToObject(eo, "age_ms", (double)e->age_ms);
        cJSON_AddNumberToObject(eo, "uses_left", e->uses_left);
        cJSON_AddItemToArray(pool, eo);
    }
    cJSON_AddNumberToObject(o, "pool_entries", (double)snap->total);
    if (snap->rif_threshold == GW_PREQUAL_THR_INF)
        cJSON_AddStringToObject(o, "rif_threshold", "+Inf");
    else
        cJSON_AddNumberToObject(o, "rif_threshold", (double)snap->rif_threshold);
    if (snap->taken_ms)
        cJSON_AddNumberToObject(o, "snapshot_age_ms", now_ms > snap->taken_ms ? (double)(now_ms - snap->taken_ms) : 0);
    else
        cJSON_AddNullToObject(o, "snapshot_age_ms");
    uv_mutex_unlock(&snap->lock);
    cJSON_AddNumberToObject(o, "worker", 0);
    return o;
}

char *gw_status_render(const gw_admin_source_t *src, uint64_t now_ms, size_t *len)
{
    const gw_config_t *cfg = src->cfg;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "workers", (double)src->nshards);
    cJSON *ups = cJSON_AddArrayToObject(root, "upstreams");
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        const gw_upstream_cfg_t *uc = &cfg->upstreams[u];
        bool prequal = strcmp(uc->strategy, "prequal") == 0;
        cJSON *uo = cJSON_CreateObject();
        cJSON_AddStringToObject(uo, "name", uc->name);
        cJSON_AddStringToObject(uo, "strategy", uc->strategy);
        cJSON *bs = cJSON_AddArrayToObject(uo, "backends");
        for (uint32_t k = 0; k < gw_upstream_nslots(uc); k++)
            if (gw_backend_listed(src->backends[gw_upstream_slot_gindex(uc, k)]))
                cJSON_AddItemToArray(bs, status_backend(src, uc, k, prequal, now_ms));
        if (prequal && src->nshards > 0)
            cJSON_AddItemToObject(uo, "prequal", status_pool(src, u, now_ms));
        cJSON_AddItemToArray(ups, uo);
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (text)
        *len = strlen(text);
    return text;
}
