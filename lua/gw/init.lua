--- The gw API inside prequal-gw (ARCHITECTURE.md §6): `req`, `res` and the global `gw`, as thin wrappers
-- over the gw_ffi_* functions the binary exports (core/lua_ffi.c). Every call is an FFI call that
-- LuaJIT can compile; nothing here builds a table per request unless the hook asks for one
-- (`req:headers()`, `req.ctx`).
--
-- The worker's C side calls the `gw._on_*` runners below with the hook function and the request's
-- id: a number the worker gives each request that runs Lua and never reuses, the key of req.ctx.
-- gw._end(id) drops that ctx on every way a request ends, aborted ones included. The C functions
-- find the request themselves (the worker sets it around each call), so `_p` stays nil: no
-- pointer is cast, and the calls stay on a JIT trace. One `req` and one `res` object per worker
-- are reused for every request: hooks run one at a time and cannot yield.
--
-- lua/gw/test.lua implements the same API without the binary, for unit tests of hooks and
-- strategies; spec/contract_spec.lua keeps the two in step.

local ffi = require("ffi")
local cjson = require("cjson")
local C = ffi.C

ffi.cdef [[
int gw_ffi_req_get(void *p, int what, const char **out, size_t *len);
int gw_ffi_req_header(void *p, const char *name, size_t nlen, const char **out, size_t *len);
int gw_ffi_req_header_at(void *p, uint32_t i, const char **name, size_t *nlen,
                         const char **value, size_t *vlen);
int gw_ffi_req_edit(void *p, int op, const char *name, size_t nlen, const char *value,
                    size_t vlen, const char **err);
int gw_ffi_req_set_path(void *p, const char *path, size_t len, const char **err);
int gw_ffi_req_tried(void *p, uint32_t index);
int gw_ffi_respond(void *p, int status, const char *body, size_t len, const char **err);
int gw_ffi_res_status(void *p);
int gw_ffi_res_set_status(void *p, int status, const char **err);
int gw_ffi_res_header(void *p, const char *name, size_t nlen, const char **out, size_t *len);
int gw_ffi_res_header_at(void *p, uint32_t i, const char **name, size_t *nlen,
                         const char **value, size_t *vlen);
int gw_ffi_res_edit(void *p, int op, const char *name, size_t nlen, const char *value,
                    size_t vlen, const char **err);
int gw_ffi_res_info(void *p, int what, const char **out, size_t *len);
int gw_ffi_res_body(void *p, const char **out, size_t *len);
int gw_ffi_res_set_body(void *p, const char *body, size_t len, const char **err);
double gw_ffi_now(void);
void gw_ffi_log(int level, const char *msg, size_t len);
typedef struct gw_ffi_backend {
    uint32_t id;
    uint32_t weight;
    int32_t healthy;
    uint32_t rif;
    uint32_t fails;
    int32_t probe_rif;
    double latency_ms;
    double probe_latency_ms;
    double probe_age_ms;
} gw_ffi_backend_t;
int gw_ffi_native_index(const char *name);
int gw_ffi_native_pick(void *p, int which, const uint32_t *ids, uint32_t nids);
]]

local str_out = ffi.new("const char *[1]")
local len_out = ffi.new("size_t[1]")
local name_out = ffi.new("const char *[1]")
local nlen_out = ffi.new("size_t[1]")
local err_out = ffi.new("const char *[1]")
local ffi_string, tostring, type, pairs = ffi.string, tostring, type, pairs

local SET, ADD, CLEAR = 0, 1, 2
local REQ_METHOD, REQ_PATH, REQ_ORIG_PATH, REQ_QUERY, REQ_HOST, REQ_CLIENT_IP, REQ_ID = 0, 1, 2, 3, 4, 5, 6

local gw = { json = cjson, worker = { id = 0 }, strategy = {} }

-- Log -------------------------------------------------------------------------------------------

local function logger(level)
    return function(...)
        local n = select("#", ...)
        local parts = {}
        for i = 1, n do
            parts[i] = tostring((select(i, ...)))
        end
        local msg = table.concat(parts, " ")
        C.gw_ffi_log(level, msg, #msg)
    end
end
gw.log = { debug = logger(0), info = logger(1), warn = logger(2), err = logger(3) }

function gw.now()
    return C.gw_ffi_now()
end

-- Per-request context tables, by request id, kept until the request ends (gw._end). -----------

local ctxs = {}

local function ctx_of(self)
    local id = self._key
    local t = ctxs[id]
    if not t then
        t = {}
        ctxs[id] = t
    end
    return t
end

-- req -------------------------------------------------------------------------------------------

local req_methods = {}
local req_mt = {
    __index = function(self, k)
        if k == "ctx" then
            return ctx_of(self)
        end
        return req_methods[k]
    end,
}

local function req_get(self, what)
    C.gw_ffi_req_get(self._p, what, str_out, len_out)
    return ffi_string(str_out[0], len_out[0])
end

function req_methods.method(self) return req_get(self, REQ_METHOD) end
function req_methods.path(self) return req_get(self, REQ_PATH) end
function req_methods.orig_path(self) return req_get(self, REQ_ORIG_PATH) end
function req_methods.query(self) return req_get(self, REQ_QUERY) end
function req_methods.host(self) return req_get(self, REQ_HOST) end
function req_methods.client_ip(self) return req_get(self, REQ_CLIENT_IP) end
function req_methods.id(self) return req_get(self, REQ_ID) end

function req_methods.header(self, name)
    name = tostring(name)
    if C.gw_ffi_req_header(self._p, name, #name, str_out, len_out) == 1 then
        return ffi_string(str_out[0], len_out[0])
    end
    return nil
end

local function collect(p, at)
    local t, i = {}, 0
    while at(p, i, name_out, nlen_out, str_out, len_out) == 1 do
        local k = ffi_string(name_out[0], nlen_out[0]):lower()
        local v = ffi_string(str_out[0], len_out[0])
        t[k] = t[k] and (t[k] .. ", " .. v) or v
        i = i + 1
    end
    return t
end

function req_methods.headers(self)
    return collect(self._p, C.gw_ffi_req_header_at)
end

local function edit(fn, p, op, name, value)
    name = tostring(name)
    value = value == nil and "" or tostring(value)
    if fn(p, op, name, #name, value, #value, err_out) ~= 0 then
        return nil, ffi_string(err_out[0])
    end
    return true
end

function req_methods.set_header(self, n, v) return edit(C.gw_ffi_req_edit, self._p, SET, n, v) end
function req_methods.add_header(self, n, v) return edit(C.gw_ffi_req_edit, self._p, ADD, n, v) end
function req_methods.clear_header(self, n) return edit(C.gw_ffi_req_edit, self._p, CLEAR, n, nil) end

function req_methods.set_path(self, path)
    path = tostring(path)
    if C.gw_ffi_req_set_path(self._p, path, #path, err_out) ~= 0 then
        return nil, ffi_string(err_out[0])
    end
    return true
end

function req_methods.tried(self, backend)
    if type(backend) ~= "table" or not backend.id then
        return false
    end
    return C.gw_ffi_req_tried(self._p, backend.id - 1) == 1
end

local RESPONDED = setmetatable({}, { __tostring = function() return "gw.RESPONDED" end })
gw.RESPONDED = RESPONDED

local function respond(p, status, body, headers)
    status = tonumber(status)
    if not status then
        return nil, "status must be a number"
    end
    -- Checked before any header is applied, so a refused response leaves nothing behind.
    if status < 200 or status > 599 then
        return nil, "status must be between 200 and 599"
    end
    if type(body) == "table" then
        body = cjson.encode(body)
        local has_ct = false
        if headers then
            for k in pairs(headers) do
                if tostring(k):lower() == "content-type" then has_ct = true end
            end
        end
        if not has_ct then
            edit(C.gw_ffi_res_edit, p, SET, "Content-Type", "application/json")
        end
    elseif body == nil then
        body = ""
    else
        body = tostring(body)
    end
    if headers then
        for k, v in pairs(headers) do
            local ok, err = edit(C.gw_ffi_res_edit, p, SET, k, v)
            if not ok then
                return nil, err
            end
        end
    end
    if C.gw_ffi_respond(p, status, body, #body, err_out) ~= 0 then
        return nil, ffi_string(err_out[0])
    end
    return RESPONDED
end

function req_methods.respond(self, status, body, headers)
    local r, err = respond(self._p, status, body, headers)
    if r then
        self._responded = true
        return r
    end
    error(err, 2)
end

-- res -------------------------------------------------------------------------------------------

local res_methods = {}
local res_mt = {
    __index = function(self, k)
        if k == "ctx" then
            return ctx_of(self)
        end
        return res_methods[k]
    end,
}

function res_methods.status(self) return C.gw_ffi_res_status(self._p) end

function res_methods.set_status(self, status)
    if C.gw_ffi_res_set_status(self._p, tonumber(status) or 0, err_out) ~= 0 then
        return nil, ffi_string(err_out[0])
    end
    return true
end

function res_methods.header(self, name)
    name = tostring(name)
    if C.gw_ffi_res_header(self._p, name, #name, str_out, len_out) == 1 then
        return ffi_string(str_out[0], len_out[0])
    end
    return nil
end

function res_methods.headers(self)
    return collect(self._p, C.gw_ffi_res_header_at)
end

function res_methods.set_header(self, n, v) return edit(C.gw_ffi_res_edit, self._p, SET, n, v) end
function res_methods.add_header(self, n, v) return edit(C.gw_ffi_res_edit, self._p, ADD, n, v) end
function res_methods.clear_header(self, n) return edit(C.gw_ffi_res_edit, self._p, CLEAR, n, nil) end

function res_methods.backend(self)
    if C.gw_ffi_res_info(self._p, 0, str_out, len_out) == 1 then
        return ffi_string(str_out[0], len_out[0])
    end
    return nil
end

function res_methods.source(self)
    C.gw_ffi_res_info(self._p, 1, str_out, len_out)
    return ffi_string(str_out[0], len_out[0])
end

--- The whole response body, on routes with buffer_response; nil, err elsewhere.
function res_methods.body(self)
    if C.gw_ffi_res_body(self._p, str_out, len_out) == 1 then
        return ffi_string(str_out[0], len_out[0])
    end
    return nil, "not buffered: this route streams its responses (set buffer_response)"
end

--- Replaces the body (Content-Length follows), on routes with buffer_response.
function res_methods.set_body(self, body)
    body = type(body) == "table" and cjson.encode(body) or tostring(body)
    if C.gw_ffi_res_set_body(self._p, body, #body, err_out) ~= 0 then
        return nil, ffi_string(err_out[0])
    end
    return true
end

-- Runners called from C (lua_bridge.c) -----------------------------------------------------------

local req = setmetatable({}, req_mt)
local res = setmetatable({}, res_mt)

--- Runs an on_request hook. Returns 1 when the hook answered the request, 0 to go on.
function gw._on_request(fn, id)
    req._key = id
    req._responded = false
    local status, body, headers = fn(req)
    if status == RESPONDED or req._responded then
        return 1
    end
    if status == nil then
        return 0
    end
    local ok, err = respond(req._p, status, body, headers)
    if not ok then
        error("invalid response from hook: " .. tostring(err), 0)
    end
    return 1
end

--- Runs a rewrite_path hook: it gets the path about to go upstream and may return a new one.
function gw._rewrite_path(fn, id)
    req._key = id
    local path = fn(req:path(), req)
    if path ~= nil then
        local ok, err = req:set_path(path)
        if not ok then
            error("rewrite_path returned an invalid path: " .. tostring(err), 0)
        end
    end
    return 0
end

--- Runs an on_response or on_log hook.
function gw._on_response(fn, id)
    res._key = id
    fn(res)
    return 0
end

-- Strategies ------------------------------------------------------------------------------------

-- A backend of a view: url, id and meta are plain fields; the rest is read from the C array the
-- worker refreshes before each pick. Views and backends are read-only.
local function readonly()
    error("backend views are read-only", 2)
end

local backend_getters = {
    weight = function(r) return r.weight end,
    healthy = function(r) return r.healthy ~= 0 end,
    rif = function(r) return r.rif end,
    fails = function(r) return r.fails end,
    latency_ms = function(r) return r.latency_ms end,
    probe_rif = function(r) if r.probe_rif >= 0 then return r.probe_rif end end,
    probe_latency_ms = function(r) if r.probe_rif >= 0 then return r.probe_latency_ms end end,
    probe_age_ms = function(r) if r.probe_rif >= 0 then return r.probe_age_ms end end,
}

local backend_ptr = ffi.typeof("gw_ffi_backend_t *")
local raw_of = setmetatable({}, { __mode = "k" })
local views = setmetatable({}, { __mode = "k" }) -- view -> its backends, to repair a tampered view
local view_ids = setmetatable({}, { __mode = "k" }) -- view -> its backends by id

local backend_mt = {
    __index = function(b, k)
        local get = backend_getters[k]
        if get then
            return get(raw_of[b])
        end
        return nil
    end,
    __newindex = readonly,
}

--- Builds the read-only view of an upstream's members over the C array `ptr` (one entry per
--- slot): `ids` lists the members' ids (slot + 1), `urls` and `metas` are keyed by id (a meta is
--- a table, or the JSON text of a registered backend's meta). Without `state` (the first time)
--- it creates the state and runs strategy.init(upstream, view, state). Returns view, state.
function gw._make_view(ptr, ids, urls, metas, strategy, upstream, state)
    local raw = ffi.cast(backend_ptr, ptr)
    local items, by_id = {}, {}
    for i = 1, #ids do
        local id = ids[i]
        local meta = metas[id]
        if type(meta) == "string" then
            local ok, t = pcall(cjson.decode, meta)
            meta = ok and type(t) == "table" and t or nil
        end
        local b = setmetatable({ id = id, url = urls[id], meta = meta or {} }, backend_mt)
        raw_of[b] = raw + (id - 1)
        items[i] = b
        by_id[id] = b
    end
    -- A plain array, so that # and ipairs work (LuaJIT ignores __len on tables); new keys are
    -- refused, and the runner puts back what a strategy removed (see _strategy_pick).
    local view = {}
    for i = 1, #items do
        view[i] = items[i]
    end
    setmetatable(view, { __newindex = readonly })
    views[view] = items
    view_ids[view] = by_id
    if state == nil then
        state = {}
        if strategy.init then
            strategy.init(upstream, view, state)
        end
    end
    return view, state
end

--- Membership changed: strategy.on_backends_changed(view, state) with the new view.
function gw._backends_changed(strategy, view, state)
    if strategy.on_backends_changed then
        strategy.on_backends_changed(view, state)
    end
end

local ids = ffi.new("uint32_t[?]", 4096)

-- gw.strategy.<name>(backends, req): a native strategy over the backends of `backends` (a view
-- or any list of its backends).
setmetatable(gw.strategy, {
    __index = function(t, name)
        local which = C.gw_ffi_native_index(tostring(name))
        if which < 0 then
            return nil
        end
        local function pick(backends, r)
            local n = #backends
            if n > 4096 then n = 4096 end
            for i = 1, n do
                ids[i - 1] = backends[i].id - 1
            end
            local idx = C.gw_ffi_native_pick((r or req)._p, which, ids, n)
            if idx < 0 then
                return nil
            end
            for i = 1, n do
                local b = backends[i]
                if b.id == idx + 1 then
                    return b
                end
            end
            return nil
        end
        rawset(t, name, pick)
        return pick
    end,
})

--- Runs strategy.pick(view, req, state). Returns the 0-based index of the backend, or raises.
function gw._strategy_pick(strategy, view, id, state)
    req._key = id
    local items = views[view]
    if #view ~= #items or view[1] ~= items[1] then
        for i = 1, #items do
            rawset(view, i, items[i])
        end
        for i = #items + 1, #view do
            rawset(view, i, nil)
        end
    end
    local b = strategy.pick(view, req, state)
    if b == nil then
        return nil
    end
    if type(b) ~= "table" or raw_of[b] == nil then
        error("pick must return a backend of the view, got " .. type(b), 0)
    end
    return b.id - 1
end

--- Runs strategy.on_result(backend, result, state) when the strategy has one.
function gw._strategy_result(strategy, view, idx, status, latency_ms, ok, state)
    local b = view_ids[view][idx + 1]
    if strategy.on_result and b then -- b is nil when the backend left since the pick
        strategy.on_result(b, { status = status, latency_ms = latency_ms, ok = ok }, state)
    end
end

--- The request ended (answered, or aborted: the worker calls this on every end path): its ctx
--- goes.
function gw._end(id)
    ctxs[id] = nil
end

return gw
