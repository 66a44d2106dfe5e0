--- hooks.api_key: API key authentication in on_request.
--
-- A request must carry a known key in a header (default `X-API-Key`) or, when `query_param`
-- is set, in the query string. Without one it is answered with 401 and a JSON body
-- `{"error":"unauthorized","message":"missing API key"|"invalid API key","request_id":"..."}`
-- and `WWW-Authenticate: ApiKey realm="<realm>"`; it never reaches a backend. With a valid key
-- the client's name goes into `req.ctx.client` and the key header is removed, so the secret
-- does not reach the backend. The header wins over the query parameter: a wrong header is
-- rejected even if the query parameter is right.
--
-- Options:
--
--  * `keys` (required): a list of keys `{ "k1", "k2" }` (the client is then named "key#1",
--    "key#2", ..., never by the key itself, so logs don't leak it) or a map
--    `{ k1 = "client-a", k2 = "client-b" }`.
--  * `header` ("X-API-Key"): the request header holding the key.
--  * `query_param` (nil): also accept the key in this query parameter. The API has no way to
--    change the query string, so such a key DOES reach the backend: prefer the header.
--  * `realm` ("api"): the realm announced in WWW-Authenticate.
--
-- Keys are compared by a table lookup of the whole string, not byte by byte, so the time taken
-- does not reveal how long a matching prefix is. (It is not constant-time hashing either; the
-- 401 answers to "missing" and "invalid" differ only in their message.)
--
-- Example (gateway.lua):
--
--     local api_key = require("hooks.api_key")
--     local auth = api_key.new{ keys = { [os.getenv("APP_KEY")] = "app" }, query_param = "api_key" }
--     routes = { { match = { path_prefix = "/api/" }, upstream = "app", on_request = auth.on_request } }
--
-- @module hooks.api_key

local type, pairs, error = type, pairs, error
local find, sub, gsub, char = string.find, string.sub, string.gsub, string.char
local tonumber = tonumber
local gmatch = string.gmatch

local M = {}

local function unescape(s)
    s = gsub(s, "+", " ")
    return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

-- The first value of `name` in a query string ("a=1&b=2"), URL-decoded, or nil.
local function query_value(query, name)
    for pair in gmatch(query, "[^&]+") do
        local eq = find(pair, "=", 1, true)
        local k = eq and sub(pair, 1, eq - 1) or pair
        if unescape(k) == name then
            return eq and unescape(sub(pair, eq + 1)) or ""
        end
    end
    return nil
end

local function build_lookup(keys)
    if type(keys) ~= "table" then
        error("api_key.new: keys must be a list or a map of keys", 3)
    end
    local lookup, n = {}, 0
    local list = #keys > 0
    for k, v in pairs(keys) do
        local key, client
        if list then
            if type(k) ~= "number" then
                error("api_key.new: keys mixes a list and a map", 3)
            end
            key, client = v, "key#" .. k
        else
            key, client = k, v
        end
        if type(key) ~= "string" or key == "" or type(client) ~= "string" then
            error("api_key.new: keys must be non-empty strings (mapped to client names)", 3)
        end
        lookup[key] = client
        n = n + 1
    end
    if n == 0 then
        error("api_key.new: keys is empty (every request would be rejected)", 3)
    end
    return lookup
end

--- Builds the hook.
-- @tparam table opts see the module comment
-- @return `{ on_request = fn(req) }`
function M.new(opts)
    if type(opts) ~= "table" then
        error("api_key.new: options table expected", 2)
    end
    local lookup = build_lookup(opts.keys)
    local header = opts.header or "X-API-Key"
    local query_param = opts.query_param
    if type(header) ~= "string" or header == "" then
        error("api_key.new: header must be a non-empty string", 2)
    end
    if query_param ~= nil and (type(query_param) ~= "string" or query_param == "") then
        error("api_key.new: query_param must be a non-empty string", 2)
    end
    local realm = opts.realm or "api"
    if type(realm) ~= "string" or find(realm, '["\\%c]') then
        error("api_key.new: realm must be a string without quotes or control characters", 2)
    end
    local challenge = { ["WWW-Authenticate"] = 'ApiKey realm="' .. realm .. '"' }

    local function reject(req, message)
        return 401, { error = "unauthorized", message = message, request_id = req:id() },
            challenge
    end

    local function on_request(req)
        local key = req:header(header)
        local from_header = key ~= nil
        if key == nil and query_param then
            local q = req:query()
            if q ~= "" then
                key = query_value(q, query_param)
            end
        end
        if key == nil or key == "" then
            return reject(req, "missing API key")
        end
        local client = lookup[key]
        if client == nil then
            return reject(req, "invalid API key")
        end
        req.ctx.client = client
        if from_header then
            req:clear_header(header)
        end
        return nil
    end

    return { on_request = on_request }
end

-- Exposed for tests.
M._query_value = query_value

return M
