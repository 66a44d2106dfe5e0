/*
 * prequal: the pure core of the Prequal load balancer (docs/PREQUAL.md; Wydrowski et al., NSDI
 * 2024).
 *
 * One gw_prequal_t is the probe pool of one upstream in one worker ("client" in the paper). It does
 * no I/O, reads no clock and keeps no global state: the caller passes the time (now_ms, from the
 * loop's clock) and the worker's generator (uint64_t *rng, see gw_rand_next), so tests are exact.
 * Backends are named by their index 0..n-1 within the upstream. The caller owns the network side:
 * sending probes over keep-alive connections, timeouts, health, ejection, in-flight counts.
 *
 * Request path, per request:
 *   k = gw_prequal_probes_for_request(p);                  how many probes this request triggers
 *   gw_prequal_choose_probe_targets(p, eligible, n, k, ..) which backends to probe (async)
 *   i = gw_prequal_pick(p, now, tried, load, rng, &branch) -1: every backend is in `tried`
 * Probe path: gw_prequal_on_probe_result() (mode tracking), then gw_prequal_on_probe() when the
 * reply carried signals. Failures: gw_prequal_purge(). Idle timer: gw_prequal_idle_probe_due().
 *
 * Nothing here allocates after gw_prequal_new()/gw_prequal_resize(); no function is thread-safe
 * except that another thread may read gw_prequal_stats() counters with GW_RELAXED_LOAD.
 */
#ifndef GW_PREQUAL_H
#define GW_PREQUAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* docs/PREQUAL.md §2. Field names match gateway.lua. */
typedef struct gw_prequal_params {
    uint32_t pool_size; /* m: max pool entries (one per backend), 0..1024; 0: one per backend */
    uint32_t max_age_ms;           /* entries older than this are dropped, 1..60000 */
    double probes_per_request;     /* r_probe, 0..16, fractional allowed */
    double removes_per_request;    /* r_remove, 0..16, fractional allowed */
    double delta;                  /* δ of Eq. 1, 0..100 */
    uint32_t max_reuse;            /* cap of the reuse budget, 1..1024 */
    double q_rif;                  /* hot/cold quantile, 0..1 (1 = latency only) */
    uint32_t rif_history;          /* unused (was the RIF ring's length), 1..4096: still accepted */
    uint32_t probe_timeout_ms;     /* caller's probe timeout, 1..60000 (validated only) */
    uint32_t idle_probe_ms;        /* idle probing period, 1..60000 */
    uint32_t max_probes_in_flight; /* caller's per-worker cap, 1..65536 (validated only) */
    uint32_t probe_rate; /* budget: probes per second to one backend per worker, 1..10^6 */
    uint32_t latency_smoothing_ms; /* time constant of a backend's cost estimate, 1..60000 */
} gw_prequal_params_t;

typedef enum gw_prequal_branch {
    GW_PREQUAL_COLD = 0, /* a cold entry with the lowest latency */
    GW_PREQUAL_HOT,      /* every usable entry hot: the lowest RIF */
    GW_PREQUAL_FALLBACK, /* under 2 usable entries: caller picks a random healthy backend */
    GW_PREQUAL_BRANCH_COUNT
} gw_prequal_branch_t;

typedef enum gw_prequal_reason {
    GW_PREQUAL_RM_AGE = 0,    /* older than max_age_ms when selecting */
    GW_PREQUAL_RM_REUSE,      /* reuse budget spent */
    GW_PREQUAL_RM_CAPACITY,   /* pool full when a probe for a new backend arrived: oldest evicted */
    GW_PREQUAL_RM_OLDEST,     /* per-request removal, the oldest */
    GW_PREQUAL_RM_WORST,      /* per-request removal, the worst */
    GW_PREQUAL_RM_FAILURE,    /* connect error, timeout or 5xx from the backend */
    GW_PREQUAL_RM_MEMBERSHIP, /* backend removed or replaced */
    GW_PREQUAL_RM_SILENCE,    /* its probe timed out: not chosen again until it answers */
    GW_PREQUAL_REASON_COUNT
} gw_prequal_reason_t;

/* prequal_probes_total{result}: ok, synthetic and piggyback are counted by this module; the caller
 * counts fail, timeout and skipped with gw_prequal_count_probe(). */
typedef enum gw_prequal_probe_stat {
    GW_PREQUAL_PROBE_STAT_OK = 0,
    GW_PREQUAL_PROBE_STAT_FAIL,
    GW_PREQUAL_PROBE_STAT_TIMEOUT,
    GW_PREQUAL_PROBE_STAT_SKIPPED,
    GW_PREQUAL_PROBE_STAT_SYNTHETIC,
    GW_PREQUAL_PROBE_STAT_PIGGYBACK,
    GW_PREQUAL_PROBE_STAT_COUNT
} gw_prequal_probe_stat_t;

/* How a backend gets into the pool (docs/PREQUAL.md §4). */
typedef enum gw_prequal_mode {
    GW_PREQUAL_MODE_PROBE = 0, /* answers the probe endpoint */
    GW_PREQUAL_MODE_PASSIVE,   /* does not: synthetic entries, explicit probe retried every 60 s */
    GW_PREQUAL_MODE_PIGGYBACK, /* signals arrive as headers on normal responses */
    GW_PREQUAL_MODE_COUNT
} gw_prequal_mode_t;

/* What an explicit probe reply said, for the mode state machine. */
typedef enum gw_prequal_probe_result {
    GW_PREQUAL_PROBE_OK_WITH_SIGNALS = 0, /* RIF (and latency) parsed from headers or JSON */
    GW_PREQUAL_PROBE_NO_SIGNALS,          /* 404/405, or neither headers nor JSON fields */
    GW_PREQUAL_PROBE_FAILED,              /* connect error, 5xx: not a reply */
    GW_PREQUAL_PROBE_TIMED_OUT            /* no reply within the probe timeout: not a reply */
} gw_prequal_probe_result_t;

/* What to do with a backend chosen as a probe target. */
typedef enum gw_prequal_probe_action {
    GW_PREQUAL_SEND_PROBE = 0, /* send an explicit probe */
    GW_PREQUAL_SYNTHESIZE      /* call gw_prequal_synthesize(): no network cost */
} gw_prequal_probe_action_t;

#define GW_PREQUAL_PASSIVE_AFTER 3         /* consecutive no-signal replies before passive mode */
#define GW_PREQUAL_PASSIVE_RETRY_MS 60000u /* explicit probe retry period in passive mode */
#define GW_PREQUAL_LAT_SAMPLES 32          /* per-backend latency sample ring */
#define GW_PREQUAL_LAT_WINDOW_MS 1000u     /* samples older than this are ignored */
#define GW_PREQUAL_THR_INF UINT64_MAX      /* threshold when q_rif >= 1 (everything cold) */
#define GW_PREQUAL_PROBE_BURST 2.0         /* token bucket depth of the probe budget */
#define GW_PREQUAL_REUSE_POOL 16           /* m of Eq. 1 when pool_size is 0: the paper's pool */

/* Counters. Written only by the owning worker with relaxed stores; other threads may read them
 * with GW_RELAXED_LOAD. */
typedef struct gw_prequal_stats {
    uint64_t picks[GW_PREQUAL_BRANCH_COUNT];
    uint64_t removals[GW_PREQUAL_REASON_COUNT];
    uint64_t probes[GW_PREQUAL_PROBE_STAT_COUNT];
    uint64_t pool_entries;  /* current number of entries (gauge) */
    uint64_t rif_threshold; /* threshold of the last non-fallback pick; GW_PREQUAL_THR_INF = +Inf */
} gw_prequal_stats_t;

/* One pool entry as /status shows it. */
typedef struct gw_prequal_entry_info {
    uint32_t backend;
    uint32_t rif;
    uint64_t latency_us;
    uint64_t age_ms;
    uint32_t uses_left;
} gw_prequal_entry_info_t;

/* What the gateway itself knows about a backend now (the caller reads the backend's shared
 * counters, which count every worker). */
typedef struct gw_prequal_load {
    uint32_t inflight; /* this gateway's requests in flight to the backend now */
} gw_prequal_load_t;

typedef struct gw_prequal gw_prequal_t;

/** Fills `p` with the defaults of docs/PREQUAL.md §2. */
void gw_prequal_params_default(gw_prequal_params_t *p);

/** NULL when every field of `p` is in range, else a static message naming the first bad field and
 * its valid range (e.g. "q_rif must be in [0, 1]"). NaN is out of every range. */
const char *gw_prequal_params_check(const gw_prequal_params_t *p);

/** A new pool for an upstream of `nbackends` backends (0 allowed), with a copy of `params`.
 * NULL when the params fail gw_prequal_params_check() or memory is short. Free with
 * gw_prequal_free(). */
gw_prequal_t *gw_prequal_new(const gw_prequal_params_t *params, size_t nbackends);

/** Frees `p` (NULL is a no-op). */
void gw_prequal_free(gw_prequal_t *p);

/** The params the pool was created with. */
const gw_prequal_params_t *gw_prequal_params(const gw_prequal_t *p);

/** The upstream now has `nbackends` backends. Entries of backends >= nbackends are dropped
 * (reason membership); new indices start in probe mode with no samples. Indices below the old
 * size keep their state, so when backends were reordered or replaced the caller must also call
 * gw_prequal_purge(p, i, GW_PREQUAL_RM_MEMBERSHIP) and gw_prequal_forget(p, i) for each changed
 * index. Returns 0, or -ENOMEM with `p` unchanged. Allocates. */
int gw_prequal_resize(gw_prequal_t *p, size_t nbackends);

/** Number of probes this request triggers: take(&acc, probes_per_request × min(1, spare /
 * GW_PREQUAL_SPARE_KNEE)), where take adds the rate to an accumulator and returns its integer
 * part, so 0.5 gives 0,1,0,1 and 3 gives 3,3,3, and spare is the worker's idle fraction
 * (gw_prequal_loop_idle; 1 until measured): the full rate while the loop is idle at least half
 * the time, proportionally fewer below (docs/PREQUAL.md §3.1). The
 * caller sends min(result, eligible, room under max_probes_in_flight) and counts the rest as
 * skipped. */
uint32_t gw_prequal_probes_for_request(gw_prequal_t *p);

#define GW_PREQUAL_SPARE_WINDOW_MS 100 /* the idle fraction is measured over this long */
#define GW_PREQUAL_SPARE_KNEE 0.5      /* idle fraction from which probes run at the full rate */

/** The worker's event loop had spent `idle_ns` in total waiting for events at now_ms (libuv's
 * uv_metrics_idle_time). Once per GW_PREQUAL_SPARE_WINDOW_MS, the idle fraction of the window
 * since the last such call becomes the spare that scales the probes per request (docs/PREQUAL.md
 * §3.1). The first call only starts a window. */
void gw_prequal_loop_idle(gw_prequal_t *p, uint64_t now_ms, uint64_t idle_ns);

/** The current spare fraction, in [0, 1]. */
double gw_prequal_spare(const gw_prequal_t *p);

/** Chooses min(k, number of eligible) DISTINCT backends uniformly at random among those with
 * eligible[i] true (healthy, not ejected, no probe of this worker in flight), by a partial
 * Fisher-Yates shuffle; writes them to out[0..] (room for k) and returns how many. Only the first
 * min(n, nbackends) entries of `eligible` are looked at. No allocation. */
size_t gw_prequal_choose_probe_targets(gw_prequal_t *p, const bool *eligible, size_t n, uint32_t k,
                                       uint64_t *rng, uint32_t *out);

/** True when the idle timer should probe: no request (gw_prequal_pick call) for idle_probe_ms,
 * or fewer than 2 unexpired entries in the pool (expired entries are dropped here, reason age).
 * When true the caller sends gw_prequal_idle_probes() probes to targets from
 * gw_prequal_choose_probe_targets(). */
bool gw_prequal_idle_probe_due(gw_prequal_t *p, uint64_t now_ms);

/** ceil(probes_per_request): how many probes an idle tick sends. */
uint32_t gw_prequal_idle_probes(const gw_prequal_t *p);

/** Eq. 1 of the paper: b_reuse = max{1, (1+δ) / ((1 − m/n)·r_probe − r_remove)}, with m =
 * pool_size (GW_PREQUAL_REUSE_POOL when it is 0) and n = n_healthy; max_reuse when the
 * denominator is <= 0 (or n is 0); never more than max_reuse. Check value: m=16, n=100,
 * r_probe=3, r_remove=1, δ=1 gives 1.316. */
double gw_prequal_reuse_budget(const gw_prequal_params_t *params, size_t n_healthy);

/** Whether the probe budget allows an explicit probe to `backend` now: a token bucket per
 * backend, refilled at probe_rate per second and holding at most GW_PREQUAL_PROBE_BURST
 * tokens; gw_prequal_probe_sent() and piggybacked signals (gw_prequal_on_piggyback) spend one. */
bool gw_prequal_probe_allowed(gw_prequal_t *p, uint32_t backend, uint64_t now_ms);

/** A probe to `backend` goes out at now_ms while the gateway has `inflight` requests in flight
 * to it (all workers): the reply's RIF is corrected by what the gateway sends and completes after
 * this moment (gw_prequal_pick's effective RIF). */
void gw_prequal_probe_sent(gw_prequal_t *p, uint32_t backend, uint64_t now_ms, uint32_t inflight);

/** A probe reply with signals from `backend`, received at `recv_ms` (receipt, not send time),
 * to the probe last announced with gw_prequal_probe_sent() (without one, the correction starts
 * from 0 requests in flight). Makes it the backend's latest report, replaces the backend's entry if
 * it has one, else evicts the oldest entry when the pool is full (reason capacity), and inserts the
 * entry with uses_left = the reuse budget for `n_healthy` healthy backends, randomly rounded to
 * floor or ceil so the expectation is exact. Counts the probe as ok. Out-of-range backends are
 * ignored. No allocation.
 */
void gw_prequal_on_probe(gw_prequal_t *p, uint32_t backend, uint32_t rif, uint64_t latency_us,
                         uint64_t recv_ms, size_t n_healthy, uint64_t *rng);

/** Selects a backend by the hot-cold lexicographic rule (docs/PREQUAL.md §3.5), ignoring entries of
 * backends whose bit is set in `tried` (bit i of tried[i / 64]; may be NULL). `load` has one
 * element per backend (NULL: nothing in flight). Each entry is judged by its effective RIF: the
 * probed RIF + the gateway's in-flight count now − its in-flight count when the probe was sent
 * (requests sent since the probe minus those completed since), at least 0. Latency, in the cold
 * order (lowest first, then effective RIF, then index) and as the hot order's tie-break, is the
 * prediction for a request sent now: cost × (effective RIF + 1). The cost is (L + prior) / (R + 1),
 * L and R being the backend's sums of reported latencies and of (probed RIF + 1) over every
 * report with a latency, decayed by exp(−age / latency_smoothing_ms), and the prior the median
 * of the backends' L / R among those with such a report within max_age_ms (recomputed at most
 * once per now_ms). Before any backend reported a latency, the moving average of latency /
 * (rif_at_start + 1) over gw_prequal_record_latency's samples stands in (0 before one). Expired entries
 * are dropped first (reason age). Returns the backend index and sets *branch to COLD or HOT; with
 * fewer than 2 usable entries sets FALLBACK and returns the backend not in `tried` with the
 * fewest requests in flight (load; ties at random with `rng`), or -1 when all are in `tried`. After
 * a selection the entry's uses_left is decremented (removed at 0, reason reuse), and take(&acc,
 * removes_per_request) removals run, alternating oldest and worst, as far as the inflow allows:
 * each needs a reply that added an entry (not replaced one) since, and at most
 * ceil(removes_per_request) such replies are kept in credit. Records now_ms as the last request
 * time for gw_prequal_idle_probe_due(). No allocation; O(nbackends) (the threshold and the
 * fallback look at every backend, as the caller's health scan does). */
int gw_prequal_pick(gw_prequal_t *p, uint64_t now_ms, const uint64_t *tried,
                    const gw_prequal_load_t *load, uint64_t *rng, gw_prequal_branch_t *branch);

/** The current hot/cold threshold: the nearest-rank q_rif quantile, sorted[floor(q·(c−1))], of
 * one value per backend: the effective RIF (see gw_prequal_pick, with `load`; NULL: no change
 * since) of its latest report (probe, piggyback or synthetic) that is not older than max_age_ms,
 * c being the number of such backends. GW_PREQUAL_THR_INF when q_rif >= 1 or c = 0.
 * O(nbackends), no allocation. */
uint64_t gw_prequal_rif_threshold(gw_prequal_t *p, uint64_t now_ms, const gw_prequal_load_t *load);

/** Drops the entry of `backend` if there is one (reason is FAILURE for a connect error, timeout
 * or 5xx, MEMBERSHIP for a removed backend). Returns whether an entry was dropped. */
bool gw_prequal_purge(gw_prequal_t *p, uint32_t backend, gw_prequal_reason_t reason);

/** Resets the per-backend state of `backend` (mode, no-signal count, latency samples, latest
 * report) for an index that now names a different backend, and drops its pool entry if the
 * caller has not (gw_prequal_purge, reason membership). */
void gw_prequal_forget(gw_prequal_t *p, uint32_t backend);

/** Feeds an explicit probe's outcome to the backend's mode state machine (docs/PREQUAL.md §4): in
 * probe mode, GW_PREQUAL_PASSIVE_AFTER consecutive NO_SIGNALS replies switch to passive with a
 * retry at now+60 s; OK resets the count; FAILED and TIMED_OUT are not replies and neither count
 * nor reset. TIMED_OUT drops the backend's entry (reason silence): a backend that does not answer
 * probes is not chosen from what it said before. In passive or piggyback mode (a retry probe), OK
 * returns to probe mode; anything else keeps the mode. */
void gw_prequal_on_probe_result(gw_prequal_t *p, uint32_t backend, gw_prequal_probe_result_t result,
                                uint64_t now_ms);

/** The backend's mode (probe mode for out-of-range indices). */
gw_prequal_mode_t gw_prequal_mode(const gw_prequal_t *p, uint32_t backend);

/** For a backend chosen as a probe target: SEND_PROBE in probe mode, and in passive/piggyback mode
 * when the 60 s retry is due (the next retry is then scheduled, so a lost reply cannot cause a
 * probe storm); SYNTHESIZE otherwise. */
gw_prequal_probe_action_t gw_prequal_probe_action(gw_prequal_t *p, uint32_t backend,
                                                  uint64_t now_ms);

/** X-Prequal headers seen on a normal response of `backend`: a passive backend switches to
 * piggyback mode, the signals spend a token of the probe budget (so a backend that piggybacks
 * needs fewer explicit probes), and enter the pool like a probe reply (counted as piggyback) whose
 * RIF is corrected from `inflight`, the gateway's in-flight count to it when the response came. */
void gw_prequal_on_piggyback(gw_prequal_t *p, uint32_t backend, uint32_t rif, uint64_t latency_us,
                             uint64_t recv_ms, uint32_t inflight, size_t n_healthy, uint64_t *rng);

/** Records a finished request to `backend`: the gateway's in-flight count to it (all workers)
 * when the request was sent, and its latency. Kept in a ring of the last GW_PREQUAL_LAT_SAMPLES
 * per backend, for synthetic entries, and in a moving average (weight 1/8) of latency /
 * (rif_at_start + 1), the backend's cost per queued request before any backend reported a
 * latency (see gw_prequal_pick). Call it for every backend; it is cheap. */
void gw_prequal_record_latency(gw_prequal_t *p, uint32_t backend, uint32_t rif_at_start,
                               uint64_t latency_us, uint64_t now_ms);

/** Median latency (mean of the two middle values for an even count) of the backend's recorded
 * samples at RIF rif-1..rif+1 from the last GW_PREQUAL_LAT_WINDOW_MS; 0 when there is none. */
uint64_t gw_prequal_synthetic_latency(const gw_prequal_t *p, uint32_t backend, uint32_t rif,
                                      uint64_t now_ms);

/** A synthetic probe for a passive/piggyback backend: rif = `inflight` (the gateway's in-flight
 * count to it, all workers), latency = gw_prequal_synthetic_latency(); enters the pool like a
 * probe reply received now (counted as synthetic). Sound only when this gateway sends most of
 * the backend's traffic. */
void gw_prequal_synthesize(gw_prequal_t *p, uint32_t backend, uint32_t inflight, uint64_t now_ms,
                           size_t n_healthy, uint64_t *rng);

/** Counts a probe outcome the caller observes (fail, timeout, skipped). */
void gw_prequal_count_probe(gw_prequal_t *p, gw_prequal_probe_stat_t stat);

/** The counters, owned by `p` and valid until gw_prequal_free(). */
const gw_prequal_stats_t *gw_prequal_stats(const gw_prequal_t *p);

/** `backend`'s pool entry into *out, its age relative to now_ms; false when it has none. O(1).
 * Does not expire entries. */
bool gw_prequal_entry_info(const gw_prequal_t *p, uint32_t backend, uint64_t now_ms,
                           gw_prequal_entry_info_t *out);

/** Copies up to `cap` pool entries into out (in no particular order), ages relative to now_ms;
 * returns the number of entries in the pool (which may exceed cap). Does not expire entries. */
size_t gw_prequal_pool_snapshot(const gw_prequal_t *p, uint64_t now_ms,
                                gw_prequal_entry_info_t *out, size_t cap);

/** Label values for metrics: "cold"|"hot"|"fallback"; "age"|"reuse"|...; "ok"|"fail"|...;
 * "probe"|"passive"|"piggyback". "?" for values out of range. */
const char *gw_prequal_branch_name(gw_prequal_branch_t b);
const char *gw_prequal_reason_name(gw_prequal_reason_t r);
const char *gw_prequal_probe_stat_name(gw_prequal_probe_stat_t s);
const char *gw_prequal_mode_name(gw_prequal_mode_t m);

#endif
