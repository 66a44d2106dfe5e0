--- hooks.rate_limit: a token-bucket rate limit per key (by default per client IP).
--
-- Each key has a bucket of `burst` tokens that refills at `rate` tokens per second; a request
-- takes one token. A request that finds less than one token is answered with 429, a JSON body
-- `{"error":"too_many_requests","message":"rate limit exceeded","request_id":"..."}` and:
--
--  * `Retry-After`: whole seconds until a token is back (at least 1);
--  * `X-RateLimit-Limit`: the bucket size (`burst`), as Envoy's local rate limit reports it;
--  * `X-RateLimit-Remaining`: whole tokens left (0).
--
-- PER WORKER: every worker has its own Lua state and therefore its own buckets, and a client's
-- connections may land on any worker. With N workers a key may get up to N x `rate` (and
-- N x `burst`) overall; divide by `workers` if you need a global bound, or run one worker.
--
-- Memory is bounded: at most `max_keys` buckets are kept per worker, and beyond that the least
-- recently seen key is dropped. A dropped key comes back with a full bucket, which is what its
-- bucket would hold anyway once it has been idle for burst / rate seconds.
--
-- Time comes from `gw.now()` (monotonic seconds), so tests drive it with a fake clock.
--
-- Options:
--
--  * `rate` (required): tokens per second (> 0; fractions allowed: 0.5 = one every 2 s).
--  * `burst` (default `rate`, at least 1): bucket size, the most requests allowed at once.
--  * `key` (default: the client IP): `fn(req) -> key`; a nil key is not limited.
--  * `max_keys` (10000): buckets kept per worker.
--
-- Example:
--
--     local rl = require("hooks.rate_limit").new{ rate = 100, burst = 200,
--         key = function(req) return req.ctx.client or req:client_ip() end }
--     { match = { path_prefix = "/api/" }, upstream = "app", on_request = rl.on_request }
--
-- @module hooks.rate_limit

local type, error, tostring = type, error, tostring
local ceil, floor = math.ceil, math.floor

local M = {}

local function client_ip(req)
    return req:client_ip()
end

--- Builds the hook.
-- @tparam table opts see the module comment
-- @return `{ on_request = fn(req) }`
function M.new(opts)
    if type(opts) ~= "table" then
        error("rate_limit.new: options table expected", 2)
    end
    local rate = opts.rate
    if type(rate) ~= "number" or rate ~= rate or rate <= 0 or rate == math.huge then
        error("rate_limit.new: rate must be a positive number of requests per second", 2)
    end
    local burst = opts.burst or math.max(1, rate)
    if type(burst) ~= "number" or burst ~= burst or burst < 1 or burst == math.huge then
        error("rate_limit.new: burst must be a number >= 1", 2)
    end
    local keyfn = opts.key or client_ip
    if type(keyfn) ~= "function" then
        error("rate_limit.new: key must be a function of req", 2)
    end
    local max_keys = opts.max_keys or 10000
    if type(max_keys) ~= "number" or max_keys < 1 then
        error("rate_limit.new: max_keys must be >= 1", 2)
    end
    local limit_header = tostring(floor(burst))

    -- key -> bucket { key, tokens, last, newer, older }, and a list of buckets from the most
    -- recently seen (head) to the least (tail), so eviction and touching are O(1).
    local buckets = {}
    local count = 0
    local head, tail = nil, nil

    local function unlink(b)
        if b.newer then b.newer.older = b.older else head = b.older end
        if b.older then b.older.newer = b.newer else tail = b.newer end
        b.newer, b.older = nil, nil
    end

    local function push_head(b)
        b.older = head
        if head then head.newer = b else tail = b end
        head = b
    end

    local function on_request(req)
        local key = keyfn(req)
        if key == nil then
            return nil
        end
        local now = gw.now()
        local b = buckets[key]
        if b then
            local elapsed = now - b.last
            if elapsed > 0 then
                local tokens = b.tokens + elapsed * rate
                b.tokens = tokens < burst and tokens or burst
                b.last = now
            end
            if head ~= b then
                unlink(b)
                push_head(b)
            end
        else
            b = { key = key, tokens = burst, last = now }
            buckets[key] = b
            push_head(b)
            count = count + 1
            if count > max_keys then
                local old = tail
                unlink(old)
                buckets[old.key] = nil
                count = count - 1
            end
        end
        if b.tokens >= 1 then
            b.tokens = b.tokens - 1
            return nil
        end
        local wait = ceil((1 - b.tokens) / rate)
        if wait < 1 then
            wait = 1
        end
        return 429,
            { error = "too_many_requests", message = "rate limit exceeded",
              request_id = req:id() },
            { ["Retry-After"] = tostring(wait), ["X-RateLimit-Limit"] = limit_header,
              ["X-RateLimit-Remaining"] = "0" }
    end

    return { on_request = on_request }
end

return M
