/*
 * Fuzzes the reading of a Prequal probe reply (core/probe.c): the input is the reply as the
 * backend sends it, fed to gw_probe_reply_feed in two reads split where the first byte says, in a
 * buffer of the size the probe connection reads into; a complete reply's signals are read with
 * gw_probe_reply_signals (headers, {"rif","latency_ms"} or OpenPrequal's JSON). The input is
 * also read as a bare body by gw_probe_parse_signals, so the JSON readers see every input even
 * when it is not valid HTTP. Checks: header slices lie inside what was fed and names hold no
 * line break (values may: llhttp lets obs-fold through in responses), and signals are found only in
 * a 2xx reply (UBSan watches the conversions of JSON numbers).
 */
#include <string.h>

#include "fuzz.h"
#include "probe.h"

#define IN_MAX 4096 /* GW_PROBE_IN_MAX */

static void check_signals(const gw_probe_signals_t *s)
{
    GW_FUZZ_CHECK(s->found);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t split_at = data[0];
    data++;
    size--;
    if (size > IN_MAX)
        size = IN_MAX;
    char *in = malloc(size ? size : 1);
    memcpy(in, data, size);

    gw_probe_signals_t sig;
    if (gw_probe_parse_signals(NULL, 0, GW_SLICE(in, size), &sig))
        check_signals(&sig);

    gw_probe_reply_t r;
    gw_probe_reply_init(&r);
    size_t first = size ? split_at * size / 255 : 0;
    int rc = gw_probe_reply_feed(&r, in, first);
    if (rc == GW_PROBE_REPLY_MORE)
        rc = gw_probe_reply_feed(&r, in + first, size - first);
    GW_FUZZ_CHECK(r.nheaders <= GW_PROBE_HEADERS_MAX);
    GW_FUZZ_CHECK(r.body_len <= sizeof r.body);
    for (uint32_t i = 0; i < r.nheaders; i++) {
        gw_slice_t n = r.headers[i].name, v = r.headers[i].value;
        GW_FUZZ_CHECK(n.p >= in && n.p + n.len <= in + size);
        GW_FUZZ_CHECK(v.len == 0 || (v.p >= in && v.p + v.len <= in + size));
        GW_FUZZ_CHECK(!memchr(n.p, '\n', n.len) && !memchr(n.p, '\r', n.len));
    }
    if (rc == GW_PROBE_REPLY_DONE) {
        if (gw_probe_reply_signals(&r, &sig)) {
            check_signals(&sig);
            GW_FUZZ_CHECK(r.parser.status_code < 300);
        }
    }
    free(in);
    return 0;
}
