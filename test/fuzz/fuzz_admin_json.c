/*
 * Fuzzes the JSON bodies of the admin API's POST /register and POST /unregister
 * (gw_registry_handle, core/registry.c): the input is a sequence of up to 8 requests, each a flag
 * byte (bit 0: register, else unregister; the rest: how far the clock moves first), a length
 * byte (255: the rest of the input) and the body. A fresh registry per input, for a config with
 * two upstreams, a static backend and room for 4 registrations, so every input starts from the
 * same state and expiry, renewals, a full upstream and the static-backend conflict can all be
 * reached. Checks: every answer is a JSON object, an error one has "error" and "message"
 * strings, a success has "status", and the status is one the API documents.
 */
#include <cjson/cJSON.h>
#include <string.h>

#include "config.h"
#include "fuzz.h"
#include "log.h"
#include "registry.h"

static gw_config_t *cfg;

static const char config_src[] =
    "return {\n"
    "  listen = '127.0.0.1:18080',\n"
    "  registration = { allow = { '127.0.0.0/8', '::1', '10.0.0.0/8' }, ttl_ms = 1000,\n"
    "                   max_backends = 4, upstream = 'api' },\n"
    "  upstreams = {\n"
    "    api = { backends = { 'http://127.0.0.1:9001' } },\n"
    "    web = { backends = {} },\n"
    "  },\n"
    "  routes = { { match = { path_prefix = '/' }, upstream = 'api' } },\n"
    "}\n";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    gw_log_set_level(GW_LOG_ERR); /* every registration is logged at info */
    char *err = NULL;
    cfg = gw_config_load_string("fuzz_admin_json.lua", config_src, NULL, &err);
    if (!cfg) {
        fprintf(stderr, "fuzz_admin_json: %s\n", err);
        abort();
    }
    return 0;
}

static void check_answer(int st, const char *json)
{
    GW_FUZZ_CHECK(json != NULL);
    GW_FUZZ_CHECK(st == 200 || st == 201 || st == 400 || st == 403 || st == 404 || st == 409 ||
                  st == 503);
    cJSON *doc = cJSON_Parse(json);
    GW_FUZZ_CHECK(doc && cJSON_IsObject(doc));
    if (st >= 400) {
        GW_FUZZ_CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(doc, "error")));
        GW_FUZZ_CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(doc, "message")));
    } else {
        GW_FUZZ_CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(doc, "status")));
    }
    cJSON_Delete(doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gw_registry_t *reg = NULL;
    char *err = NULL;
    if (gw_registry_new(cfg, &reg, &err) != 0) {
        fprintf(stderr, "fuzz_admin_json: %s\n", err);
        abort();
    }
    gw_fuzz_in_t in = {data, size};
    uint64_t now = 1000;
    for (int i = 0; i < 8 && in.len > 0; i++) {
        uint8_t flags = gw_fuzz_byte(&in);
        uint8_t len = gw_fuzz_byte(&in);
        const uint8_t *body;
        size_t n = gw_fuzz_take(&in, len == 255 ? in.len : len, &body);
        now += (uint64_t)(flags >> 1) * 50;
        /* The admin connection hands over a malloc'd body of exactly its length. */
        char *copy = malloc(n ? n : 1);
        memcpy(copy, body, n);
        char *json = NULL;
        int st = gw_registry_handle(reg, flags & 1, copy, n, now, &json);
        check_answer(st, json);
        free(json);
        free(copy);
    }
    gw_registry_free(reg);
    return 0;
}
