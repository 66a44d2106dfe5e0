--- strategies.consistent_hash: send every request with the same key to the same backend.
--
-- The key comes from a header (`header = "X-User"`), a cookie (`cookie = "session"`) or a
-- function (`key = fn(req) -> string|nil`); give exactly one. Requests without a key (nil or
-- "") are not hashed: they go to `gw.strategy.<fallback>(backends, req)` (Prequal by default).
--
-- The ring: each backend gets `replicas` points (scaled by its weight relative to the mean
-- weight, at least 1) at hash(url .. "#" .. i). A key goes to the owner of the first point at
-- or after hash(key), wrapping around. The ring is built from every member, healthy or not, in
-- init and on_backends_changed (and again if pick notices that membership changed); pick then
-- costs one hash and a binary search. An unhealthy or already-tried owner is skipped by walking
-- on along the ring, so its keys spread over the others and come back when it recovers. If
-- every untried backend is unhealthy, the key's first untried owner is returned anyway (as the
-- native strategies do, core/lb.h); nil only when all were tried.
--
-- Minimal disruption: points depend only on each backend's url, so when one of N backends
-- leaves only the keys it owned (about 1/N) move, and they spread over the rest; every other
-- key keeps its backend. Adding a backend likewise takes about 1/(N+1) of the keys. Because
-- points hash the url, every worker (and every gateway) builds the same ring.
--
-- The hash is FNV-1a (32 bit) over the bytes, followed by MurmurHash3's 32-bit finaliser:
-- FNV-1a alone spreads keys that differ only in their last bytes ("url#1", "url#2") poorly.
-- It uses LuaJIT's `bit` module; products are split so every intermediate is exact in a
-- double.
--
-- Options:
--
--  * `header` | `cookie` | `key`: where the key comes from (exactly one).
--  * `replicas` (160): points per backend of mean weight; more points, more even spread.
--  * `fallback` ("prequal"): the native strategy for requests without a key.
--
-- Example:
--
--     upstreams = { app = { backends = { ... },
--         strategy = require("strategies.consistent_hash").new{ cookie = "session" } } }
--
-- @module strategies.consistent_hash

local bit = require("bit")

local type, tostring, error, floor = type, tostring, error, math.floor
local bxor, band, rshift, lshift, tobit = bit.bxor, bit.band, bit.rshift, bit.lshift, bit.tobit
local byte, find, sub, gmatch = string.byte, string.find, string.sub, string.gmatch
local sort = table.sort

local M = {}

-- a * b modulo 2^32 as a signed 32-bit number; the 16-bit split keeps products below 2^48.
local function mul32(a, b)
    return tobit(a * band(b, 0xffff) + lshift(tobit(a * rshift(b, 16)), 16))
end

local FNV_OFFSET = tobit(0x811c9dc5)

-- FNV-1a over s, as a signed 32-bit number.
local function fnv1a(s)
    local h = FNV_OFFSET
    for i = 1, #s do
        h = bxor(h, byte(s, i))
        -- h * 16777619 = h * 2^24 + h * 403
        h = tobit(lshift(h, 24) + h * 403)
    end
    return h
end

--- FNV-1a 32-bit of a string, as an unsigned number (fnv1a32("a") == 0xe40c292c).
function M.fnv1a32(s)
    return fnv1a(s) % 4294967296
end

--- The ring's hash of a string: FNV-1a then the MurmurHash3 finaliser, unsigned 32-bit.
function M.hash(s)
    local h = fnv1a(s)
    h = bxor(h, rshift(h, 16))
    h = mul32(h, 0x85ebca6b)
    h = bxor(h, rshift(h, 13))
    h = mul32(h, 0xc2b2ae35)
    h = bxor(h, rshift(h, 16))
    return h % 4294967296
end

local hash = M.hash

-- The value of cookie `name` in a Cookie header, or nil.
local function cookie_value(header, name)
    for pair in gmatch(header, "[^;]+") do
        local s = find(pair, "%S")
        if s then
            local eq = find(pair, "=", s, true)
            if eq and sub(pair, s, eq - 1) == name then
                return (sub(pair, eq + 1):gsub("%s+$", ""))
            end
        end
    end
    return nil
end

M._cookie_value = cookie_value

local function build(backends, replicas)
    local n = #backends
    local total = 0
    for i = 1, n do
        total = total + (backends[i].weight or 1)
    end
    local mean = n > 0 and total / n or 1
    local points = {}
    for i = 1, n do
        local b = backends[i]
        local count = floor(replicas * (b.weight or 1) / mean + 0.5)
        if count < 1 then
            count = 1
        end
        local url, id = b.url, b.id
        for r = 0, count - 1 do
            points[#points + 1] = { hash(url .. "#" .. r), i, id, url }
        end
    end
    -- Ties (rare) are broken by url so every worker orders the ring the same way.
    sort(points, function(x, y)
        if x[1] ~= y[1] then
            return x[1] < y[1]
        end
        return x[4] < y[4]
    end)
    local hashes, pos, ids = {}, {}, {}
    for k = 1, #points do
        local p = points[k]
        hashes[k], pos[k], ids[k] = p[1], p[2], p[3]
    end
    return { n = n, size = #points, hashes = hashes, pos = pos, ids = ids }
end

-- Index of the first point with a hash >= h, wrapping to 1.
local function lookup(hashes, size, h)
    if h > hashes[size] then
        return 1
    end
    local lo, hi = 1, size
    while lo < hi do
        local mid = floor((lo + hi) / 2)
        if hashes[mid] < h then
            lo = mid + 1
        else
            hi = mid
        end
    end
    return lo
end

-- Walks the ring from the key's point. Returns the backend, or false when the ring is stale.
local function walk(ring, backends, req, h)
    local size = ring.size
    if size == 0 then
        return nil
    end
    local pos, ids = ring.pos, ring.ids
    local start = lookup(ring.hashes, size, h)
    local fallback
    local last = 0
    for step = 0, size - 1 do
        local p = start + step
        if p > size then
            p = p - size
        end
        local i = pos[p]
        if i ~= last then
            last = i
            local b = backends[i]
            if b == nil or b.id ~= ids[p] then
                return false
            end
            if not req:tried(b) then
                if b.healthy then
                    return b
                end
                fallback = fallback or b
            end
        end
    end
    return fallback
end

--- Builds the strategy.
-- @tparam table opts see the module comment
-- @return a strategy table
function M.new(opts)
    if type(opts) ~= "table" then
        error("consistent_hash.new: options table expected", 2)
    end
    local sources = (opts.header and 1 or 0) + (opts.cookie and 1 or 0) + (opts.key and 1 or 0)
    if sources ~= 1 then
        error("consistent_hash.new: give exactly one of header, cookie or key", 2)
    end
    local keyfn
    if opts.header then
        local name = opts.header
        if type(name) ~= "string" or name == "" then
            error("consistent_hash.new: header must be a header name", 2)
        end
        keyfn = function(req) return req:header(name) end
    elseif opts.cookie then
        local name = opts.cookie
        if type(name) ~= "string" or name == "" then
            error("consistent_hash.new: cookie must be a cookie name", 2)
        end
        keyfn = function(req)
            local c = req:header("Cookie")
            return c and cookie_value(c, name)
        end
    else
        keyfn = opts.key
        if type(keyfn) ~= "function" then
            error("consistent_hash.new: key must be a function of req", 2)
        end
    end
    local replicas = opts.replicas or 160
    if type(replicas) ~= "number" or replicas < 1 or replicas ~= floor(replicas) then
        error("consistent_hash.new: replicas must be a positive integer", 2)
    end
    local fallback = opts.fallback or "prequal"
    if type(fallback) ~= "string" then
        error("consistent_hash.new: fallback must be the name of a native strategy", 2)
    end

    local strategy = { name = "consistent_hash" }

    function strategy.init(_, backends, state)
        state = state or {}
        state.ring = build(backends, replicas)
        return state
    end

    function strategy.on_backends_changed(backends, state)
        state.ring = build(backends, replicas)
    end

    function strategy.pick(backends, req, state)
        local key = keyfn(req)
        if key == nil or key == "" then
            return gw.strategy[fallback](backends, req)
        end
        local h = hash(tostring(key))
        local ring = state.ring
        if ring == nil or ring.n ~= #backends then
            ring = build(backends, replicas)
            state.ring = ring
        end
        local b = walk(ring, backends, req, h)
        if b == false then
            ring = build(backends, replicas)
            state.ring = ring
            b = walk(ring, backends, req, h)
        end
        return b or nil
    end

    return strategy
end

return M
