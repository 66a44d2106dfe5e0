--- hooks.headers: set, add and remove headers with computed values.
--
-- The static `request_headers` / `response_headers` route keys cover fixed values natively
-- (no Lua). Use this hook when a value depends on the request or response: any value may be
-- a function of `req` (request hooks) or `res` (response hooks) returning a string, or nil to
-- leave that header alone.
--
-- Operations run in this order: `remove`, then `set` (replaces every value), then `add`
-- (appends). Within `set` and `add`, headers are applied in name order, so the result does not
-- depend on table iteration order.
--
-- Options (all optional):
--
--  * `set`: name -> value (string, number or function).
--  * `add`: name -> value or a list of values.
--  * `remove`: a list of names.
--
-- Example:
--
--     local headers = require("hooks.headers")
--     on_request = headers.request{
--         set = { ["X-Client-IP"] = function(req) return req:client_ip() end },
--         remove = { "X-Debug" },
--     },
--     on_response = headers.response{
--         set = { ["X-Upstream"] = function(res) return res:backend() end },
--         add = { ["Cache-Control"] = "no-transform" },
--     },
--
-- @module hooks.headers

local type, pairs, ipairs, error, tostring = type, pairs, ipairs, error, tostring
local sort, format = table.sort, string.format

local M = {}

local function check_value(v, where)
    local t = type(v)
    if t ~= "string" and t ~= "number" and t ~= "function" then
        error(format("%s: expected a string, number or function, got %s", where, t), 5)
    end
    return v
end

-- Turns { name = value | {values} } into a list of { name, value } sorted by name.
local function compile_map(map, what, allow_lists)
    local out = {}
    if map == nil then
        return out
    end
    if type(map) ~= "table" then
        error(format("%s must be a table of name = value", what), 4)
    end
    local names = {}
    for name in pairs(map) do
        if type(name) ~= "string" or name == "" then
            error(format("%s: header names must be non-empty strings", what), 4)
        end
        names[#names + 1] = name
    end
    sort(names)
    for _, name in ipairs(names) do
        local v = map[name]
        local where = format("%s[%q]", what, name)
        if allow_lists and type(v) == "table" then
            for _, one in ipairs(v) do
                out[#out + 1] = { name, check_value(one, where) }
            end
        else
            out[#out + 1] = { name, check_value(v, where) }
        end
    end
    return out
end

local function compile(opts, what)
    if opts == nil then
        opts = {}
    end
    if type(opts) ~= "table" then
        error(what .. ": options table expected", 3)
    end
    for k in pairs(opts) do
        if k ~= "set" and k ~= "add" and k ~= "remove" then
            error(format("%s: unknown option '%s'", what, tostring(k)), 3)
        end
    end
    local remove = opts.remove or {}
    if type(remove) ~= "table" then
        error(what .. ": remove must be a list of header names", 3)
    end
    for i, name in ipairs(remove) do
        if type(name) ~= "string" or name == "" then
            error(format("%s: remove[%d] must be a header name", what, i), 3)
        end
    end
    return remove, compile_map(opts.set, what .. ".set", false),
        compile_map(opts.add, what .. ".add", true)
end

-- An edit the API refused (a computed value with CR/LF, say) is logged, not raised: the
-- request goes on without that header.
local function edited(ok, err)
    if not ok then
        gw.log.warn("hooks.headers:", err)
    end
end

-- The hook body, shared by request and response: `obj` is req or res.
local function make(remove, set, add)
    return function(obj)
        for i = 1, #remove do
            obj:clear_header(remove[i])
        end
        for i = 1, #set do
            local name, v = set[i][1], set[i][2]
            if type(v) == "function" then
                v = v(obj)
            end
            if v ~= nil then
                edited(obj:set_header(name, v))
            end
        end
        for i = 1, #add do
            local name, v = add[i][1], add[i][2]
            if type(v) == "function" then
                v = v(obj)
            end
            if v ~= nil then
                edited(obj:add_header(name, v))
            end
        end
        return nil
    end
end

--- An on_request hook changing the headers that go upstream.
-- @tparam table opts `{ set = {...}, add = {...}, remove = {...} }`
-- @return fn(req)
function M.request(opts)
    return make(compile(opts, "headers.request"))
end

--- An on_response hook changing the headers that go to the client.
-- @tparam table opts `{ set = {...}, add = {...}, remove = {...} }`
-- @return fn(res)
function M.response(opts)
    return make(compile(opts, "headers.response"))
end

return M
