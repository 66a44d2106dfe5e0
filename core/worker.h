/*
 * worker: one thread with its own uv loop, listening sockets (SO_REUSEPORT), downstream
 * connections, upstream pools, strategy state and metrics shard. A request lives entirely on one
 * worker; nothing here is touched by another thread except the backend table's atomics and the
 * metrics shard (read by the admin with relaxed loads).
 *
 * This header also declares the connection types that conn.c (downstream), proxy.c (one request's
 * forwarding) and upstream.c (backend connections and their pools) share. They are one state
 * machine split in three files; nothing outside those files and server.c includes the internals.
 */
#ifndef GW_WORKER_H
#define GW_WORKER_H

#include <llhttp.h>
#include <uv.h>

#include "arena.h"
#include "backend.h"
#include "common.h"
#include "config.h"
#include "hedge.h"
#include "http1.h"
#include "lb.h"
#include "metrics.h"

typedef struct gw_worker gw_worker_t;
typedef struct gw_conn gw_conn_t;
typedef struct gw_upconn gw_upconn_t;

/* Intrusive doubly linked list. */
typedef struct gw_link {
    struct gw_link *prev, *next;
} gw_link_t;

static inline void gw_list_init(gw_link_t *h)
{
    h->prev = h->next = h;
}
static inline bool gw_list_empty(const gw_link_t *h)
{
    return h->next == h;
}
static inline void gw_list_push(gw_link_t *h, gw_link_t *n)
{
    n->next = h->next;
    n->prev = h;
    h->next->prev = n;
    h->next = n;
}
static inline void gw_list_remove(gw_link_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}
#define GW_CONTAINER_OF(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))

/* Keep-alive pool of one backend in one worker. */
typedef struct gw_pool {
    gw_backend_t *backend;
    const gw_upstream_cfg_t *ucfg;
    gw_link_t idle; /* gw_upconn_t.link, most recently used first */
    uint32_t nidle;
} gw_pool_t;

/* Per upstream, per worker: its backends (shared objects) and the strategy state. */
typedef struct gw_worker_upstream {
    const gw_upstream_cfg_t *cfg;
    gw_backend_t **backends;
    size_t n;
    const gw_lb_ops_t *lb;
    void *lb_state;
    /* Slots not in the upstream as this worker last saw it (registration, on_register). They
     * join every pick's tried set, so no strategy ever returns one. */
    uint64_t absent[GW_MAX_UPSTREAM_BACKENDS / 64];
    uint32_t nmembers;
    uint64_t revisions;    /* sum of the slots' `revision`: weight or meta changes show in it */
    /* 1 + the highest member slot: picks look at backends[0, n_active) only, so the unused
     * registration slots at the end cost nothing per request (free slots are taken lowest
     * first). */
    size_t n_active;
    gw_hedge_t hedge; /* budget and delay, when cfg->hedge.enabled */
} gw_worker_upstream_t;

typedef struct gw_server gw_server_t;
typedef struct gw_lua gw_lua_t;

struct gw_worker {
    int id;
    gw_server_t *server;
    const gw_config_t *cfg;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wakeup;     /* the main thread asks for a drain or a stop */
    uv_timer_t drain_timer;
    uv_timer_t trim_timer; /* gives memory back after a burst of connections (server.c) */
    uv_tcp_t *listeners;
    uint32_t *listener_addr; /* [i]: the cfg->listen index listeners[i] serves */
    size_t nlisteners;       /* after a reload a worker may hold several sockets of one address */
    bool draining;
    uint64_t drain_since_ms; /* loop time when draining began */
    bool finishing;        /* closing its last handles */
    bool loop_ready;
    bool thread_started;
    gw_link_t conns;       /* gw_conn_t.link */
    uint32_t nconns;
    uint32_t conns_peak;   /* most connections held since the last trim */
    gw_link_t upconns;     /* every gw_upconn_t of this worker, for shutdown */
    gw_pool_t *pools;      /* [cfg->nbackends_total], by backend gindex */
    gw_worker_upstream_t *ups; /* [cfg->nupstreams] */
    gw_metrics_shard_t *metrics;
    gw_lua_t *lua;         /* NULL when the config has no Lua: the hot path never sees Lua */
    uint64_t rng;
    uint64_t request_seq;
    gw_arena_cache_t arena_cache; /* request arena blocks of idle connections */
    struct gw_probe_conn **probe_conns; /* [cfg->nbackends_total]: Prequal probe connections */
    uint32_t probes_in_flight;
    uint64_t membership_acked; /* the membership generation this worker applied (atomic) */
    bool loop_done;        /* the loop ended (atomic): it holds no backend any more */
    char **free_bufs;      /* recycled connection input buffers */
    uint32_t nfree_bufs;
};

/* How long a draining worker keeps an idle keep-alive connection open for a request already on
 * its way (see gw_conn_drain_all). */
#define GW_DRAIN_IDLE_GRACE_MS 250

/* The size of the input buffer of downstream and upstream connections. A request head must fit
 * into it together with a first piece of body, so it is at least header_bytes + 16 KiB. */
size_t gw_worker_buf_size(const gw_worker_t *w);
char *gw_worker_buf_get(gw_worker_t *w);
void gw_worker_buf_put(gw_worker_t *w, char *buf);

/* Called by conn.c when a connection closes, so a draining worker can finish. */
void gw_worker_conn_closed(gw_worker_t *w);

/* ---- downstream connection (conn.c) ---- */

enum gw_conn_state {
    GW_CS_IDLE,     /* waiting for the first byte of a request (keep-alive) */
    GW_CS_HEAD,     /* reading a request head */
    GW_CS_PROXY,    /* a request is being handled: body up, response down */
    GW_CS_TUNNEL,   /* after a 101: bytes both ways */
    GW_CS_LINGER,   /* response sent, FIN sent, discarding what the client still sends */
    GW_CS_CLOSING,
};

/* The request currently handled on a connection. Slices point into the connection's input
 * buffer (the head stays there until the request ends) or into the arena. */
typedef struct gw_request {
    int method;            /* llhttp_method_t */
    gw_slice_t method_name;
    gw_slice_t target;     /* as received */
    gw_slice_t host;       /* Host header value, empty if none */
    gw_slice_t request_id; /* received or generated */
    gw_slice_t upgrade;    /* Upgrade header value; once forwarded, what the backend was offered */
    gw_slice_t te;         /* Transfer-Encoding header value */
    gw_header_t *headers;
    uint32_t nheaders;
    uint32_t cap_headers;
    uint32_t nhost;
    uint8_t http_minor;
    bool keep_alive;       /* the client allows keep-alive */
    bool chunked;
    bool has_body;         /* Content-Length > 0 or chunked */
    bool has_content_length;
    uint64_t content_length;
    bool expect_continue;
    bool is_upgrade;
    bool body_done;        /* the whole request body was read from the client */
    uint64_t body_bytes;   /* body payload bytes read (for limits and logs) */
    int route;             /* index, -1 when none */
    int upstream;          /* index, -1 when none */
    uint64_t start_ns;     /* head complete */
    uint64_t upstream_start_ns; /* request head sent to the backend that answered */
    uint64_t upstream_head_ns;  /* response head received from the backend */
    bool open;             /* begun (its first byte arrived) and not ended (conn.c) */
    int status;            /* status sent to the client */
    uint64_t bytes_out;    /* response bytes handed to the socket; at its end, those sent */
    gw_backend_t *backend; /* last backend tried (the one that answered), NULL if none */
    gw_buf_t up_head;      /* the serialised head sent upstream */
    uint64_t tried[GW_MAX_UPSTREAM_BACKENDS / 64]; /* tried backends (and absent slots) by slot */
    uint32_t attempts;
    uint32_t stale_retries;
    bool retry_due;        /* the next attempt is a retry: counted once it has a backend */
    enum gw_upstream_error last_error; /* of the last failure */
    bool hedgeable;        /* its upstream hedges, and it is a GET or HEAD without a body */
    uint8_t hedges;        /* hedges due so far (sent or skipped) */
    bool upstream_sent;    /* bytes of this request reached a backend */
    bool response_started; /* the response head went to the client */
    bool close_after;      /* close the client connection after this response */
    bool head_request;
    /* Lua hooks (lua_bridge.c); untouched when no hook runs. */
    uint64_t lua_id;       /* the request's id in Lua (key of req.ctx), 0 until Lua first runs */
    gw_slice_t raw_path;   /* the path as the client sent it (origin-form, no query) */
    gw_slice_t raw_rest;   /* what followed raw_path in the target: "" or '?' and the query */
    gw_slice_t up_path;    /* the canonical path after the route's rewrite (no query): what hooks
                            * see, and what goes upstream when the route rewrites the path */
    gw_slice_t query;      /* the query, without '?' (empty if none) */
    gw_slice_t lua_path;   /* set by set_path / rewrite_path (arena), or .p == NULL */
    gw_slice_t lua_host;   /* a Host set by a hook */
    gw_header_edits_t req_edits;
    gw_header_edits_t resp_edits;
    int lua_status;        /* on_response set_status, 0: unchanged */
    int lua_respond;       /* a hook answered with this status, 0: none */
    gw_slice_t lua_body;
    gw_slice_t resp_source; /* for res:source(): "upstream" or "gateway" */
    gw_upconn_t *resp_up;   /* the upstream response whose head res: reads, or NULL */
    bool lua_response_ran;  /* on_response ran (at most once per request) */
    gw_buf_t resp_body;     /* buffer_response: the whole (decoded) response body */
    bool resp_buffered;     /* resp_body holds the complete body: res:body() works */
    gw_buf_t interim_head;  /* the 1xx being relayed to the client (proxy.c), reused for each */
} gw_request_t;

struct gw_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;      /* the deadline of the current state (gw_conn_arm_timer) */
    uv_timer_t aux_timer;  /* retry backoff */
    gw_link_t link;
    gw_worker_t *w;
    llhttp_t parser;
    enum gw_conn_state state;
    char *in;              /* input buffer (from the worker's free list) or NULL when idle */
    size_t in_len;         /* bytes in `in` */
    size_t parsed;         /* bytes of `in` consumed by the parser */
    size_t head_start;     /* offset where the current request began */
    size_t head_end;       /* offset just past the current request head */
    uint64_t state_since_ms; /* loop time when the current state began (timers) */
    uint64_t accepted_ms;    /* loop time of accept: the first request's head is timed from it */
    uint64_t write_since_ms; /* loop time when the pending client write began */
    uint32_t writes_pending;
    size_t write_queued;   /* bytes of the pending batch that libuv had left to write */
    uint32_t pending_closes;
    bool reading;
    bool header_value_done; /* the last header value callback was completed (obs-fold check) */
    bool in_field;         /* inside a header name (it may span reads) */
    bool body_flowing;     /* the upstream is ready for body bytes */
    bool body_wait;        /* a body (or tunnel) write to the backend is pending */
    bool peer_eof;
    bool served;           /* a response was completed on this connection */
    int parse_error_status; /* a status our callbacks decided (414, 431, 400) */
    const char *parse_error_msg;
    gw_request_t req;
    gw_arena_t arena;
    gw_upconn_t *up;       /* the upstream connection for the current request */
    gw_upconn_t *hedge;    /* a hedge racing `up` until a response head arrives, or NULL */
    char client_ip[48];
    uint16_t client_port;
    uv_write_t wreq;       /* the one client write batch in flight */
    uv_write_t wreq_extra; /* interim responses (100 Continue) */
    uv_shutdown_t shutdown_req;
    void (*write_cb)(gw_conn_t *, int);
};

/** Accepts a connection on `server` (a listener of worker `w`). */
void gw_conn_accept(gw_worker_t *w, uv_stream_t *server);

/* A request head, step by step (conn.c; test/fuzz/fuzz_request_head.c drives them without
 * sockets). A refused request gets `status` with the JSON error `code` and `message`. */
typedef struct gw_conn_verdict {
    int status;
    const char *code;
    const char *message;
} gw_conn_verdict_t;
/** Readies `c` (its arena initialised) for its first request: the request parser and state. */
void gw_conn_prepare(gw_conn_t *c);
/**
 * Parses c->in[c->parsed..c->in_len) of a request head that began at c->head_start, through
 * conn.c's llhttp callbacks (field names, obs-fold, Expect, limits). Returns 1 when the head is
 * complete (the parser paused just past it, c->head_end set), 0 when more bytes are needed, or
 * -1 with *v when the request is refused.
 */
int gw_conn_read_head(gw_conn_t *c, gw_conn_verdict_t *v);
/**
 * Checks a complete head and routes it: version, Host (count and syntax), framing
 * (Transfer-Encoding, Content-Length against the limit), the target's form, the canonical path
 * and the route. Returns true with r->route and r->up_path set, or false with *v.
 */
bool gw_conn_check_head(gw_conn_t *c, gw_conn_verdict_t *v);
/** Serialises the head sent upstream for `route` into r->up_head (all but Host and the final
 * CRLF, which proxy.c writes per backend). Returns false on OOM. */
bool gw_conn_build_upstream_head(gw_conn_t *c, const gw_route_cfg_t *route);

/** Closes every idle connection; marks the others to close after their response. */
void gw_conn_drain_all(gw_worker_t *w);
/** Closes every connection at once. */
void gw_conn_close_all(gw_worker_t *w);

/* The response side calls back into the connection (proxy.c -> conn.c). */
/** Closes the connection (idempotent). A request still open on it ends here, exactly once, as
 * an aborted one: logged, counted and given to on_log with the status it was sent, or 499 when
 * no response head went out (the client went away, or stopped reading). */
void gw_conn_close(gw_conn_t *c);
/** Writes `bufs` to the client as one batch. Returns 1 when the kernel took everything at once
 * (`cb` is not called: the caller goes on), 0 when the rest was queued (`cb` runs when it is
 * written; if that fails the connection is closed and `cb` is not called), or a negative error
 * (nothing queued). Only one batch may be in flight. Trying the write first saves the
 * read-stop/read-start pair (two epoll_ctl calls) that backpressure would cost on every
 * response. */
int gw_conn_write(gw_conn_t *c, const uv_buf_t *bufs, unsigned nbufs, void (*cb)(gw_conn_t *, int));

/** Writes what uv_try_write did not take: skips the first `done` bytes of `bufs` and queues
 * the rest with uv_write. Returns uv_write's result. */
int gw_write_rest(uv_write_t *req, uv_stream_t *s, const uv_buf_t *bufs, unsigned nbufs, size_t done,
                  uv_write_cb cb);
/** Sends a gateway-generated JSON error (ARCHITECTURE.md §7) and ends the request. */
void gw_conn_respond_error(gw_conn_t *c, int status, const char *code, const char *message);
/** The response is complete: log, count, then keep-alive or close. (A request that ends any
 * other way ends when its connection closes: gw_conn_close logs and counts it.) */
void gw_conn_request_done(gw_conn_t *c);
/** Resumes reading the request body from the client (after the upstream is connected). */
void gw_conn_resume_body(gw_conn_t *c);
/** Stops reading from the client (backpressure). */
void gw_conn_pause_reading(gw_conn_t *c);
void gw_conn_resume_reading(gw_conn_t *c);
/** Switches the connection to a byte tunnel with `up` (after a 101). */
void gw_conn_start_tunnel(gw_conn_t *c);
/** The tunnel bytes read from the client were written to the backend: read more. */
void gw_conn_tunnel_consumed(gw_conn_t *c);
/** Sends "100 Continue" (the backend is connected and the body may come). */
void gw_conn_send_continue(gw_conn_t *c);
/** Re-evaluates the connection timer after a change of write state. */
void gw_conn_arm_timer(gw_conn_t *c);

/* ---- one request's forwarding (proxy.c) ---- */

/** Starts forwarding the current request (head complete, route chosen, upstream head built). */
void gw_proxy_start(gw_conn_t *c);
/** The client sent body bytes `p..p+n` (raw, with chunk framing if chunked) to forward. */
void gw_proxy_body(gw_conn_t *c, const char *p, size_t n, bool last);
/** The client went away or the connection is closing: release the upstream side. */
void gw_proxy_abort(gw_conn_t *c);
/** The client finished writing the response bytes we handed it: read more from upstream. */
void gw_proxy_client_drained(gw_conn_t *c);
/** Tunnel bytes from the client are in c->in[parsed..in_len): send them to the backend. */
void gw_proxy_tunnel_client_data(gw_conn_t *c);

/* ---- upstream connections (upstream.c) ---- */

enum gw_upconn_state {
    GW_US_CONNECTING,
    GW_US_IDLE,     /* in the pool */
    GW_US_ACTIVE,   /* leased to a request */
    GW_US_TUNNEL,
    GW_US_CLOSING,
};

struct gw_upconn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect_req;
    uv_write_t wreq;
    gw_link_t link;      /* in pool->idle while idle */
    gw_link_t all;       /* in worker->upconns */
    gw_worker_t *w;
    gw_pool_t *pool;
    gw_conn_t *conn;     /* the request's connection while leased */
    /* The attempt of conn's request this connection carries (proxy.c). */
    bool inflight;         /* counted in backend->inflight (released by close or completion) */
    bool is_hedge;         /* sent as a hedge */
    uint32_t rif_at_start; /* backend->inflight (all workers) before the request was sent */
    uint64_t start_ns;     /* the request head was sent, 0 before */
    enum gw_upconn_state state;
    llhttp_t parser;
    char *in;
    size_t in_len;
    size_t parsed;
    uint32_t pending_closes;
    bool reading;
    bool write_pending;
    bool reusable;       /* false once anything makes it unsafe to reuse */
    bool head_done;      /* response head parsed */
    bool message_done;
    bool got_bytes;      /* any response byte arrived for the current request */
    bool reused;         /* leased from the pool (it may have been closed by the backend) */
    bool dechunk;        /* chunked from the backend, de-chunked for an HTTP/1.0 client */
    bool close_delimited;
    bool rechunk;        /* close-delimited from the backend, chunked to an HTTP/1.1 client */
    char chunk_line[20]; /* the chunk-size line of the one client write in flight (rechunk) */
    bool in_field;
    bool value_done;     /* the last header value ended (a value after it is obs-fold) */
    const char *head_error; /* why the response head was rejected, for the log */
    bool buffering;      /* collecting the body for a buffer_response route */
    bool too_large;      /* the body went over buffer_response's limit */
    int write_kind;      /* GW_UW_* */
    gw_slice_t reason;   /* status reason phrase (points into `in`) */
    gw_header_t *headers; /* response headers (array in the request's arena) */
    uint32_t nheaders;
    uint32_t cap_headers;
    uv_buf_t *body_bufs; /* spans collected by on_body for one client write */
    uint32_t nbody_bufs;
    uint32_t cap_body_bufs;
};

/** Starts a new connection to `pool`'s backend; `cb` is proxy.c's connect callback. */
gw_upconn_t *gw_upconn_connect(gw_worker_t *w, gw_pool_t *pool);
/** Takes an idle connection from the pool, or NULL. */
gw_upconn_t *gw_pool_lease(gw_pool_t *pool);
/** Gives a connection back after a complete response (or closes it if it is not reusable). */
void gw_pool_release(gw_upconn_t *u);
/** Closes an upstream connection (idempotent), releasing the in-flight count of the attempt it
 * carried, if any: whoever closes it (a failure, a cancelled attempt, shutdown), the backend's
 * count stays right. */
void gw_upconn_close(gw_upconn_t *u);
/** The attempt `u` carried is over: its backend's in-flight count goes (once). */
void gw_upconn_release_inflight(gw_upconn_t *u);
/** Closes every upstream connection of the worker. */
void gw_upconn_close_all(gw_worker_t *w);
int gw_upconn_read_start(gw_upconn_t *u);
void gw_upconn_read_stop(gw_upconn_t *u);
/** Sets the upstream connection's timer to fire after `ms` (0 stops it). */
void gw_upconn_arm(gw_upconn_t *u, uint32_t ms);

enum { GW_UW_HEAD = 1, GW_UW_BODY, GW_UW_TUNNEL };

/* Events an upstream connection reports to proxy.c. */
void gw_proxy_on_connect(gw_upconn_t *u, int status);
void gw_proxy_on_read(gw_upconn_t *u, ssize_t nread);
void gw_proxy_on_timeout(gw_upconn_t *u);

/* The response head, step by step (proxy.c; test/fuzz/fuzz_response_head.c drives them without
 * sockets). */
/** Makes `u` carry an attempt of c's request (the request's only one, or the original of a
 * hedged one, in c->up; its hedge in c->hedge) and prepares its response parser. */
void gw_proxy_attach(gw_conn_t *c, gw_upconn_t *u, bool hedge);
enum { GW_PROXY_HEAD_BAD = -1, GW_PROXY_HEAD_MORE, GW_PROXY_HEAD_FINAL, GW_PROXY_HEAD_INTERIM };
/**
 * Parses u->in[u->parsed..u->in_len) up to the end of the next response head, through proxy.c's
 * llhttp callbacks (which refuse a bad status line, field name or obs-fold). Returns
 * GW_PROXY_HEAD_FINAL (the final head, u->parsed just past it), GW_PROXY_HEAD_INTERIM (a 1xx
 * other than 101, for the caller to relay or drop; the next call goes on after it),
 * GW_PROXY_HEAD_MORE when more bytes are needed, or GW_PROXY_HEAD_BAD for a malformed response.
 */
int gw_proxy_read_head(gw_upconn_t *u);
/**
 * Builds the head sent to the client from the backend's response head (after the on_response
 * hooks, which may change the status and headers) and decides the framing towards the client
 * (u->dechunk, u->rechunk, u->close_delimited, r->close_after). Returns 1, 0 on OOM, or -1 when
 * a hook failed (the request is then answered with a 500).
 */
int gw_proxy_build_client_head(gw_conn_t *c, gw_upconn_t *u, gw_buf_t *b);

/** Monotonic time in nanoseconds (the loop's cached time is not precise enough for latency). */
uint64_t gw_now_ns(void);

#endif
