--- gw.test: unit-test hooks and strategies with busted, without the prequal-gw binary.
--
-- It builds `req`, `res` and backend views that implement the API of ARCHITECTURE.md §6 in plain
-- Lua, installs a fake global `gw`, and runs hooks and strategies the way the runtime does
-- (normalising what `on_request` returns, handing a strategy its per-worker state back).
-- The fakes are deliberately strict so that code which passes here runs unchanged on the
-- real FFI objects:
--
--  * `req` and `res` have methods and a `ctx` table only: reading any other field raises
--    (catches `req.path` written for `req:path()`), and so does assigning any field.
--  * A backends view is a read-only array (`#backends`, `backends[i]`, ipairs), as the
--    runtime's is. Adding a key raises; a strategy run by `strategy_runner` that replaces an
--    entry is reported.
--  * A backend entry has exactly the documented fields; reading another one raises, and so
--    does writing any.
--  * Header names must be tokens and values strings or numbers without CR, LF or NUL; a path
--    must start with "/" and hold no whitespace or control characters. Like the runtime's,
--    the editing methods (set_header, add_header, clear_header, set_path, set_status) return
--    true, or nil and a message; an invalid hook result or req:respond() raises.
--  * Membership hooks get plain `{ id, url, weight, meta, static }` tables (`member`), and
--    `run_on_register` applies the runtime's rule: only `false` refuses.
--  * `req:respond()` ends the request at once and returns `gw.RESPONDED`; `init` gets the
--    per-worker state as its third argument; `gw.log` joins its arguments with spaces. All
--    three follow lua/gw/init.lua.
--
-- Example:
--
--     local gwt = require("gw.test")
--     local api_key = require("hooks.api_key")
--
--     describe("auth", function()
--         before_each(function() gwt.install_gw() end)
--         after_each(function() gwt.uninstall_gw() end)
--
--         it("rejects a request without a key", function()
--             local hook = api_key.new{ keys = { "secret" } }
--             local r = gwt.run_on_request(hook.on_request, gwt.request{ path = "/x" })
--             assert.are.equal(401, r.status)
--             assert.are.equal("unauthorized", gwt.json_body(r).error)
--         end)
--     end)
--
-- @module gw.test

local cjson = require("cjson")

local type, tostring, error, pairs, ipairs, select = type, tostring, error, pairs, ipairs, select
local setmetatable, rawset, rawget = setmetatable, rawset, rawget
local lower, find, sub, format = string.lower, string.find, string.sub, string.format
local concat, sort = table.concat, table.sort
local floor, random = math.floor, math.random
local unpack = unpack
local getmetatable = getmetatable

local M = {}

--- Log lines written through the fake `gw.log`, oldest first: `{ level = "info", message = "..." }`.
-- `install_gw` empties it (the table stays the same).
M.logs = {}

--- The fake `gw` table installed by `install_gw`, or nil.
M.gw = nil

--- What `req:respond()` returns (the runtime's `gw.RESPONDED`).
M.RESPONDED = setmetatable({}, { __tostring = function() return "gw.RESPONDED" end })

-- Private state of req and res objects, so that the objects themselves expose only the API.
local priv = setmetatable({}, { __mode = "k" })

local next_request_id = 0

---------------------------------------------------------------------------------------------
-- Validation shared by req, res and normalize_response. The `try_` functions return nil and a
-- message, as the runtime's editing methods do (`true` or `nil, err`); the `check_` ones raise,
-- for what the runtime raises on (a bad hook result) or for plain misuse of gw.test. Levels
-- make errors point at the caller.

local function try_name(name)
    if type(name) ~= "string" or not find(name, "^[%w!#$%%&'*+%-%.^_`|~]+$") then
        return nil, "invalid header name " .. tostring(name)
    end
    return name
end

local function try_value(v)
    local tv = type(v)
    if tv == "number" then
        v = tostring(v)
    elseif tv ~= "string" then
        return nil, "header value must be a string or number, got " .. tv
    end
    if find(v, "[\r\n%z]") then
        return nil, "header value contains CR, LF or NUL"
    end
    return v
end

local function try_path(p)
    if type(p) ~= "string" or sub(p, 1, 1) ~= "/" or find(p, "[%s%c?#]") then
        return nil, "path must be a string starting with '/' without whitespace, '?' or '#', got " ..
            tostring(p)
    end
    return p
end

-- As the runtime (core/lua_ffi.c): framing and hop-by-hop headers belong to the gateway.
local guarded = {
    ["content-length"] = true, ["transfer-encoding"] = true, ["connection"] = true,
    ["keep-alive"] = true, ["upgrade"] = true, ["te"] = true, ["trailer"] = true,
    ["proxy-connection"] = true,
}
local function try_editable(name, op, value)
    local l = name:lower()
    if guarded[l] then
        return nil, "framing and hop-by-hop headers are managed by the gateway"
    end
    if l == "host" and (op == "clear" or value == "") then
        return nil, "Host can only be set to a valid value"
    end
    return name
end

-- What a hook may answer with or set: the runtime takes 200..599 (1xx are the gateway's).
local function try_answer_status(s)
    if type(s) ~= "number" or s ~= floor(s) or s < 200 or s > 599 then
        return nil, "status must be an integer in 200..599, got " .. tostring(s)
    end
    return s
end

local function try_status(s)
    if type(s) ~= "number" or s ~= floor(s) or s < 100 or s > 599 then
        return nil, "status must be an integer in 100..599, got " .. tostring(s)
    end
    return s
end

local function raise_if(check)
    return function(v, what, level)
        local ok, err = check(v)
        if ok == nil then
            error(what .. ": " .. err, level + 1)
        end
        return ok
    end
end

local check_name, check_value = raise_if(try_name), raise_if(try_value)
local check_path, check_status = raise_if(try_path), raise_if(try_status)

---------------------------------------------------------------------------------------------
-- Header lists: an ordered array of { name, value } pairs keeping the original spelling.

local function hdr_from_option(h, what)
    local list = {}
    if h == nil then
        return list
    end
    if type(h) ~= "table" then
        error(what .. ": headers must be a table", 3)
    end
    if #h > 0 then
        -- { {"Name", "value"}, ... } keeps order and allows repeats
        for _, pair in ipairs(h) do
            check_name(pair[1], what, 3)
            list[#list + 1] = { pair[1], check_value(pair[2], what, 3) }
        end
        return list
    end
    local names = {}
    for name in pairs(h) do
        check_name(name, what, 3)
        names[#names + 1] = name
    end
    sort(names)
    for _, name in ipairs(names) do
        local v = h[name]
        if type(v) == "table" then
            for _, one in ipairs(v) do
                list[#list + 1] = { name, check_value(one, what, 3) }
            end
        else
            list[#list + 1] = { name, check_value(v, what, 3) }
        end
    end
    return list
end

local function hdr_get(list, name)
    local ln = lower(name)
    for i = 1, #list do
        if lower(list[i][1]) == ln then
            return list[i][2]
        end
    end
    return nil
end

local function hdr_all(list)
    local t = {}
    for i = 1, #list do
        local ln = lower(list[i][1])
        local prev = t[ln]
        t[ln] = prev and (prev .. ", " .. list[i][2]) or list[i][2]
    end
    return t
end

local function hdr_clear(list, name)
    local ln = lower(name)
    local j = 0
    local n = #list
    for i = 1, n do
        local pair = list[i]
        if lower(pair[1]) ~= ln then
            j = j + 1
            list[j] = pair
        end
    end
    for i = j + 1, n do
        list[i] = nil
    end
end

-- Methods shared by req and res for header access; `what` names the object in errors.
local function header_methods(what)
    local m = {}

    --- First value of a header (case-insensitive name), or nil.
    function m.header(self, name)
        check_name(name, what .. ":header", 2)
        return hdr_get(priv[self].headers, name)
    end

    --- A new table: lower-case name -> value, repeated names joined with ", ".
    function m.headers(self)
        return hdr_all(priv[self].headers)
    end

    -- The editing methods return true, or nil and a message (a bad name or value), as the
    -- runtime's do; a refused edit changes nothing and is not recorded.

    --- Replaces every value of a header with one value.
    function m.set_header(self, name, value)
        local ok, err = try_name(name)
        if ok then
            ok, err = try_value(value)
        end
        if ok then
            local _, e = try_editable(name, "set", ok)
            if e then
                ok, err = nil, e
            end
        end
        if not ok then
            return nil, what .. ":set_header: " .. err
        end
        local p = priv[self]
        hdr_clear(p.headers, name)
        p.headers[#p.headers + 1] = { name, ok }
        p.ops[#p.ops + 1] = { op = "set_header", name = name, value = ok }
        return true
    end

    --- Appends a value, keeping the existing ones.
    function m.add_header(self, name, value)
        local ok, err = try_name(name)
        if ok then
            ok, err = try_value(value)
        end
        if ok then
            local _, e = try_editable(name, "add", ok)
            if e then
                ok, err = nil, e
            end
        end
        if not ok then
            return nil, what .. ":add_header: " .. err
        end
        local p = priv[self]
        p.headers[#p.headers + 1] = { name, ok }
        p.ops[#p.ops + 1] = { op = "add_header", name = name, value = ok }
        return true
    end

    --- Removes every value of a header.
    function m.clear_header(self, name)
        local ok, err = try_name(name)
        if ok then
            ok, err = try_editable(name, "clear")
        end
        if not ok then
            return nil, what .. ":clear_header: " .. err
        end
        local p = priv[self]
        hdr_clear(p.headers, name)
        p.ops[#p.ops + 1] = { op = "clear_header", name = name }
        return true
    end

    return m
end

-- A strict metatable: methods only; `ctx` is a raw field; anything else raises.
local function strict_mt(what, methods)
    return {
        __index = function(_, k)
            local m = methods[k]
            if m ~= nil then
                return m
            end
            if type(k) == "string" and sub(k, 1, 2) == "__" then
                return nil -- probes by inspection tools (__tostring, __name, ...)
            end
            error(format("%s has no field '%s' (the API is methods called with ':', such as " ..
                "%s:header(name), and the table %s.ctx)", what, tostring(k), what, what), 2)
        end,
        __newindex = function(_, k)
            error(format("%s is read-only (cannot set '%s'); keep per-request data in %s.ctx",
                what, tostring(k), what), 2)
        end,
        __tostring = function(self)
            return format("gw.test %s %s", what, priv[self] and priv[self].label or "")
        end,
    }
end

---------------------------------------------------------------------------------------------
-- req

local req_methods = header_methods("req")

-- Accessors: method(), path() (the canonical path, after strip_prefix/add_prefix and set_path;
-- no query), orig_path() (the path exactly as the client sent it), query() (without '?', ""
-- when none), host(), client_ip(), id() (the request id).
function req_methods.method(self) return priv[self].method end
function req_methods.path(self) return priv[self].path end
function req_methods.orig_path(self) return priv[self].orig_path end
function req_methods.query(self) return priv[self].query end
function req_methods.host(self) return priv[self].host end
function req_methods.client_ip(self) return priv[self].client_ip end
function req_methods.id(self) return priv[self].id end

--- Sets the path sent upstream (no query string). Returns true, or nil and a message.
function req_methods.set_path(self, p)
    local ok, err = try_path(p)
    if not ok then
        return nil, "req:set_path: " .. err
    end
    local s = priv[self]
    s.path = p
    s.ops[#s.ops + 1] = { op = "set_path", path = p }
    return true
end

--- Whether `backend` was already tried for this request (retries). Compares ids, then urls.
function req_methods.tried(self, backend)
    if type(backend) ~= "table" then
        return false
    end
    local t = priv[self].tried
    return (t[backend.id] or t[backend.url]) == true
end

--- Ends the request with this response, at once, as the runtime does; raises on an invalid
-- response (the runtime turns that into a 500). Returns `gw.test.RESPONDED` (the runtime's
-- `gw.RESPONDED`): write `return req:respond(...)`.
function req_methods.respond(self, status, body, headers)
    local p = priv[self]
    p.response = M.normalize_response(status, body, headers)
    return M.RESPONDED
end

local req_mt = strict_mt("req", req_methods)

--- Builds a request.
-- @tparam table opts `method` ("GET"), `path` ("/"; a "?query" suffix is split off when
--   `query` is not given; what req:path() returns, so write it in canonical form, as the
--   gateway would give it), `orig_path` (what req:orig_path() returns: the client's bytes,
--   e.g. "/%61pi//x" for the path "/api/x"; default: `path`), `query` (""), `host` (the Host
--   header, else "localhost"),
--   `headers` (name -> value, a value may be a list for repeats; or a list of {name, value}),
--   `client_ip` ("127.0.0.1"), `id` (generated "test-N"), `ctx` (a table to share with a
--   response), `tried` (a list of backend ids or urls already tried).
-- @return req
function M.request(opts)
    opts = opts or {}
    local path, query = opts.path or "/", opts.query
    if query == nil then
        local q = find(path, "?", 1, true)
        if q then
            path, query = sub(path, 1, q - 1), sub(path, q + 1)
        else
            query = ""
        end
    end
    check_path(path, "gw.test.request", 2)
    local orig_path = opts.orig_path or path
    if type(orig_path) ~= "string" or sub(orig_path, 1, 1) ~= "/" then
        error("gw.test.request: orig_path must be a string starting with \"/\"", 2)
    end
    if type(query) ~= "string" then
        error("gw.test.request: query must be a string", 2)
    end
    local headers = hdr_from_option(opts.headers, "gw.test.request")
    local host = opts.host or hdr_get(headers, "host") or "localhost"
    if not hdr_get(headers, "host") then
        headers[#headers + 1] = { "Host", host }
    end
    local id = opts.id
    if id == nil then
        next_request_id = next_request_id + 1
        id = "test-" .. next_request_id
    end
    local tried = {}
    for _, t in ipairs(opts.tried or {}) do
        tried[type(t) == "table" and (t.id or t.url) or t] = true
    end
    local req = setmetatable({ ctx = opts.ctx or {} }, req_mt)
    priv[req] = {
        label = (opts.method or "GET") .. " " .. path,
        method = opts.method or "GET",
        path = path,
        orig_path = orig_path,
        query = query,
        host = host,
        client_ip = opts.client_ip or "127.0.0.1",
        id = tostring(id),
        headers = headers,
        tried = tried,
        ops = {},
    }
    return req
end

--- Marks a backend (entry, id or url) as tried for `req`, as the runtime does before a retry.
function M.mark_tried(req, backend)
    local key = type(backend) == "table" and (backend.id or backend.url) or backend
    priv[req].tried[key] = true
end

--- The header and path operations applied to a req or res so far, in order:
-- `{ op = "set_header"|"add_header"|"clear_header", name =, value = }`, `{ op = "set_path", path = }`,
-- `{ op = "set_status", status = }`, `{ op = "set_body", body = }`.
function M.ops(obj)
    return priv[obj].ops
end

---------------------------------------------------------------------------------------------
-- res

local res_methods = header_methods("res")

-- Accessors: status(), backend() (the url, nil for gateway responses), source() ("upstream" or
-- "gateway").
function res_methods.status(self) return priv[self].status end
function res_methods.backend(self) return priv[self].backend end
function res_methods.source(self) return priv[self].source end

--- Changes the status sent to the client. Returns true, or nil and a message.
function res_methods.set_status(self, n)
    local ok, err = try_answer_status(n)
    if not ok then
        return nil, "res:set_status: " .. err
    end
    local p = priv[self]
    p.status = n
    p.ops[#p.ops + 1] = { op = "set_status", status = n }
    return true
end

--- The whole response body, or nil, "not buffered" unless the route has buffer_response.
function res_methods.body(self)
    local p = priv[self]
    if not p.buffered then
        return nil, "not buffered"
    end
    return p.body
end

--- Replaces the body (the runtime fixes Content-Length); nil, "not buffered" unless buffered.
function res_methods.set_body(self, s)
    local p = priv[self]
    if not p.buffered then
        return nil, "not buffered"
    end
    if type(s) ~= "string" then
        error("res:set_body: body must be a string, got " .. type(s), 2)
    end
    p.body = s
    p.ops[#p.ops + 1] = { op = "set_body", body = s }
    return true
end

local res_mt = strict_mt("res", res_methods)

--- Builds a response as on_response and on_log hooks see it.
-- @tparam table opts `status` (200), `headers` (as for request), `backend` (url string or a
--   backend entry; nil for gateway responses), `source` ("upstream" when a backend is given,
--   else "gateway"), `body` (string), `buffered` (defaults to `body ~= nil`), `ctx` (pass
--   `req.ctx` to share it, as the runtime does).
-- @return res
function M.response(opts)
    opts = opts or {}
    local status = opts.status or 200
    check_status(status, "gw.test.response", 2)
    local backend = opts.backend
    if type(backend) == "table" then
        backend = backend.url
    end
    local source = opts.source or (backend and "upstream" or "gateway")
    if source ~= "upstream" and source ~= "gateway" then
        error("gw.test.response: source must be \"upstream\" or \"gateway\"", 2)
    end
    local buffered = opts.buffered
    if buffered == nil then
        buffered = opts.body ~= nil
    end
    local res = setmetatable({ ctx = opts.ctx or {} }, res_mt)
    priv[res] = {
        label = tostring(status),
        status = status,
        headers = hdr_from_option(opts.headers, "gw.test.response"),
        backend = backend,
        source = source,
        buffered = buffered and true or false,
        body = opts.body or (buffered and "" or nil),
        ops = {},
    }
    return res
end

--- The body of a response whatever buffer_response says (for assertions).
function M.body(res)
    return priv[res].body
end

---------------------------------------------------------------------------------------------
-- Running hooks

local function resolve(hook, key)
    if type(hook) == "function" then
        return hook
    end
    if type(hook) == "table" and type(hook[key]) == "function" then
        return hook[key]
    end
    error(format("gw.test: expected a function or a table with %s, got %s", key, type(hook)), 3)
end

--- Normalises what an on_request hook returned into what the runtime sends, or raises the
-- error the runtime would turn into a 500.
-- A table body is encoded with cjson (`gw.json`) and gets `Content-Type: application/json`
-- unless the hook set a Content-Type; a nil body is "". Header values must be strings or
-- numbers (converted with tostring); one value per name.
-- @return `{ status = n, body = string, headers = { name = value } }`
function M.normalize_response(status, body, headers)
    local ok, err = try_answer_status(status)
    if not ok then
        error("on_request result: " .. err, 2)
    end
    local out = {}
    local has_ct = false
    if headers ~= nil then
        if type(headers) ~= "table" then
            error("on_request result: headers must be a table, got " .. type(headers), 2)
        end
        for name, v in pairs(headers) do
            check_name(name, "on_request result", 2)
            out[name] = check_value(v, "on_request result", 2)
            if lower(name) == "content-type" then
                has_ct = true
            end
        end
    end
    if body == nil then
        body = ""
    elseif type(body) == "table" then
        body = cjson.encode(body)
        if not has_ct then
            out["Content-Type"] = "application/json"
        end
    elseif type(body) ~= "string" then
        error("on_request result: body must be a string or a table, got " .. type(body), 2)
    end
    return { status = status, body = body, headers = out }
end

--- Runs on_request hooks as the runtime does: in order (global ones first), stopping at the
-- first that ends the request.
-- @param hook a function, a table with `on_request`, or a list of those
-- @param req from `gw.test.request`
-- @return `{ status, body, headers }` (see normalize_response) or nil when the request goes on
function M.run_on_request(hook, req)
    if type(hook) == "table" and hook.on_request == nil and #hook > 0 then
        for _, h in ipairs(hook) do
            local r = M.run_on_request(h, req)
            if r then
                return r
            end
        end
        return nil
    end
    local fn = resolve(hook, "on_request")
    local p = priv[req]
    p.response = nil
    local status, body, headers = fn(req)
    if p.response then
        -- req:respond() was called: that is the answer, whether or not it was returned.
        return p.response
    end
    if status == nil then
        return nil
    end
    return M.normalize_response(status, body, headers)
end

--- Runs a rewrite_path hook as the runtime does: `fn(req:path(), req)`; a string result
-- becomes the path, nil keeps it.
-- @return the path that goes upstream
function M.run_rewrite_path(hook, req)
    local fn = resolve(hook, "rewrite_path")
    local new = fn(req:path(), req)
    if new ~= nil then
        local ok, err = req:set_path(new)
        if not ok then
            error("rewrite_path returned an invalid path: " .. err, 2)
        end
    end
    return req:path()
end

--- Runs on_response hooks (a function, a table with `on_response`, or a list) in order.
function M.run_on_response(hook, res)
    if type(hook) == "table" and hook.on_response == nil and #hook > 0 then
        for _, h in ipairs(hook) do
            M.run_on_response(h, res)
        end
        return res
    end
    resolve(hook, "on_response")(res)
    return res
end

--- Decodes a JSON body (of a normalised on_request result, a response, or a string).
function M.json_body(x)
    if type(x) == "table" and getmetatable(x) == res_mt then
        return cjson.decode(priv[x].body)
    elseif type(x) == "table" then
        return cjson.decode(x.body)
    end
    return cjson.decode(x)
end

---------------------------------------------------------------------------------------------
-- Backends views

local FIELDS = {
    id = "number", url = "string", weight = "number", healthy = "boolean", rif = "number",
    latency_ms = "number", probe_rif = "number", probe_latency_ms = "number",
    probe_age_ms = "number", fails = "number", meta = "table",
}

local function entry_mt(data)
    return {
        __index = function(_, k)
            if FIELDS[k] then
                return data[k]
            end
            if type(k) == "string" and sub(k, 1, 2) == "__" then
                return nil
            end
            error(format("backend has no field '%s' (custom data goes in meta)", tostring(k)), 2)
        end,
        __newindex = function(_, k)
            error(format("backend entries are read-only (cannot set '%s')", tostring(k)), 2)
        end,
        __tostring = function()
            return format("backend %d %s", data.id, data.url)
        end,
    }
end

local function make_entry(spec, i)
    if type(spec) == "string" then
        spec = { url = spec }
    end
    if type(spec) ~= "table" then
        error(format("gw.test.backends: entry %d must be a url or a table", i), 3)
    end
    local data = {
        id = i, weight = 1, healthy = true, rif = 0, latency_ms = 0, fails = 0,
    }
    for k, v in pairs(spec) do
        if not FIELDS[k] then
            error(format("gw.test.backends: entry %d: unknown field '%s'", i, tostring(k)), 3)
        end
        if type(v) ~= FIELDS[k] then
            error(format("gw.test.backends: entry %d: %s must be a %s", i, k, FIELDS[k]), 3)
        end
        data[k] = v
    end
    if data.url == nil then
        error(format("gw.test.backends: entry %d: url is required", i), 3)
    end
    local meta = {}
    for k, v in pairs(spec.meta or {}) do
        meta[k] = v
    end
    data.meta = meta
    return setmetatable({}, entry_mt(data)), data
end

-- A view is a plain array, as the runtime's is: `#view` and ipairs work (LuaJIT ignores __len
-- on tables, so a proxy could not give the length). Adding a key raises; overwriting an entry
-- cannot be caught by a metatable, so strategy_runner checks the view after each call.
local views = setmetatable({}, { __mode = "k" })
local view_mt = {
    __newindex = function()
        error("backends view is read-only", 2)
    end,
    __tostring = function(self)
        return format("gw.test backends view (%d)", #self)
    end,
}

--- Builds a read-only backends view, as strategies receive it.
-- @tparam table list entries: a url string, or a table with `url` and any of `id` (defaults
--   to the position; give ids explicitly to keep them stable across views), `weight` (1),
--   `healthy` (true), `rif` (0), `latency_ms` (0), `probe_rif`, `probe_latency_ms`,
--   `probe_age_ms` (nil: no probe), `fails` (0), `meta` ({}).
-- @return the view (a read-only array: `#view`, `view[i]`)
function M.backends(list)
    if type(list) ~= "table" then
        error("gw.test.backends: expected a list of backends", 2)
    end
    local entries, datas, seen = {}, {}, {}
    for i, spec in ipairs(list) do
        local e, d = make_entry(spec, i)
        if seen[d.id] then
            error(format("gw.test.backends: duplicate id %d", d.id), 2)
        end
        seen[d.id] = true
        entries[i], datas[i] = e, d
    end
    local view = {}
    for i = 1, #entries do
        view[i] = entries[i]
    end
    views[view] = { entries = entries, datas = datas }
    return setmetatable(view, view_mt)
end

--- Changes a backend's fields in a view, as the runtime's statistics would (`healthy`, `rif`,
-- `latency_ms`, probe fields, `fails`, `weight`, `meta`). The id and url cannot change. To
-- drop a probe field, build a new view (a nil in `fields` cannot be seen by pairs).
function M.update(view, i, fields)
    local v = views[view]
    local d = v and v.datas[i]
    if d == nil then
        error("gw.test.update: no backend " .. tostring(i), 2)
    end
    for k, value in pairs(fields) do
        if not FIELDS[k] or k == "id" or k == "url" then
            error("gw.test.update: cannot set '" .. tostring(k) .. "'", 2)
        end
        if type(value) ~= FIELDS[k] then
            error(format("gw.test.update: %s must be a %s", k, FIELDS[k]), 2)
        end
        d[k] = value
    end
end

--- A plain Lua array of the entries of a view (for assertions; strategies must not rely on it).
function M.list(view)
    local t = {}
    for i = 1, #view do
        t[i] = view[i]
    end
    return t
end

---------------------------------------------------------------------------------------------
-- Strategies

local function validate_strategy(s)
    if type(s) ~= "table" then
        error("strategy must be a table", 3)
    end
    if type(s.name) ~= "string" or s.name == "" then
        error("strategy.name must be a non-empty string", 3)
    end
    if type(s.pick) ~= "function" then
        error("strategy.pick must be a function", 3)
    end
    for _, k in ipairs({ "init", "on_result", "on_backends_changed" }) do
        if s[k] ~= nil and type(s[k]) ~= "function" then
            error("strategy." .. k .. " must be a function or nil", 3)
        end
    end
end

local Runner = {}
Runner.__index = Runner

--- Calls pick(backends, req, state) as the runtime does: it must not yield, and must return
-- nil or an entry of the current view.
-- Raises when a strategy changed the entries of its view.
local function check_view(self)
    local v = views[self.backends]
    if v == nil then
        return
    end
    local n = #v.entries
    local ok = #self.backends == n
    for i = 1, n do
        ok = ok and rawget(self.backends, i) == v.entries[i]
    end
    if not ok then
        error("strategy " .. self.strategy.name .. " modified its backends view", 3)
    end
end

function Runner:pick(req)
    req = req or M.request()
    local co = coroutine.create(self.strategy.pick)
    local ok, b = coroutine.resume(co, self.backends, req, self.state)
    if not ok then
        error(b, 0)
    end
    check_view(self)
    if coroutine.status(co) ~= "dead" then
        error("strategy " .. self.strategy.name .. ": pick yielded", 2)
    end
    if b ~= nil then
        local found = false
        for i = 1, #self.backends do
            if self.backends[i].id == b.id then
                found = true
                break
            end
        end
        if not found then
            error("strategy " .. self.strategy.name .. ": pick returned a non-member", 2)
        end
    end
    return b
end

--- Reports a result: `result` defaults to `{ status = 200, latency_ms = 1 }`, `ok` to
-- `status < 500`.
function Runner:result(backend, result)
    result = result or {}
    local r = {
        status = result.status or 200,
        latency_ms = result.latency_ms or 1,
        ok = result.ok,
    }
    if r.ok == nil then
        r.ok = r.status < 500
    end
    if self.strategy.on_result then
        self.strategy.on_result(backend, r, self.state)
        check_view(self)
    end
end

--- Replaces the view and calls on_backends_changed(backends, state).
function Runner:set_backends(view)
    self.backends = view
    if self.strategy.on_backends_changed then
        self.strategy.on_backends_changed(view, self.state)
        check_view(self)
    end
end

--- Starts a strategy on one (fake) worker as the runtime does: validates the table, creates
-- the per-worker state `{}` and calls `init(upstream, backends, state)` (what init returns is
-- ignored: fill `state`).
-- @return a runner with `:pick(req)`, `:result(backend, result)`, `:set_backends(view)`,
--   and the fields `state`, `backends`, `strategy`
function M.strategy_runner(strategy, backends, upstream)
    validate_strategy(strategy)
    local state = {}
    local runner = setmetatable({ strategy = strategy, backends = backends, state = state },
        Runner)
    if strategy.init then
        strategy.init(upstream or "app", backends, state)
        check_view(runner)
    end
    return runner
end

---------------------------------------------------------------------------------------------
-- Membership hooks

local MEMBER_FIELDS = { id = "number", url = "string", weight = "number", meta = "table",
    static = "boolean" }

--- A backend as hooks.on_register / on_unregister receive it: a plain table
-- `{ id, url, weight, meta, static }` (id 1, weight 1, meta {}, static false unless given).
function M.member(opts)
    if type(opts) == "string" then
        opts = { url = opts }
    end
    if type(opts) ~= "table" or type(opts.url) ~= "string" then
        error("gw.test.member: expects a url or a table with url", 2)
    end
    local b = { id = 1, weight = 1, meta = {}, static = false }
    for k, v in pairs(opts) do
        if MEMBER_FIELDS[k] == nil then
            error(format("gw.test.member: unknown field '%s'", tostring(k)), 2)
        end
        if type(v) ~= MEMBER_FIELDS[k] then
            error(format("gw.test.member: %s must be a %s", k, MEMBER_FIELDS[k]), 2)
        end
        b[k] = v
    end
    return b
end

--- Runs hooks.on_register(backend, upstream) as the runtime does: returns false when the hook
-- returned false (the backend is refused), true otherwise. A hook error propagates (the runtime
-- answers the registration with 500 hook_error, or refuses to start for a static backend).
function M.run_on_register(hook, backend, upstream)
    return hook(backend, upstream or "app") ~= false
end

--- Runs hooks.on_unregister(backend, upstream, reason); reason is "unregister" (default) or
-- "expired".
function M.run_on_unregister(hook, backend, upstream, reason)
    reason = reason or "unregister"
    if reason ~= "unregister" and reason ~= "expired" then
        error("gw.test.run_on_unregister: reason is \"unregister\" or \"expired\"", 2)
    end
    hook(backend, upstream or "app", reason)
end

---------------------------------------------------------------------------------------------
-- The fake gw

local fake_time = 1000.0
local custom_clock = false

-- Entries a native strategy may pick, following core/lb.h: healthy untried ones; else
-- unhealthy untried ones; nil when every backend has been tried.
local function candidates(backends, req)
    local healthy, other = {}, {}
    for i = 1, #backends do
        local b = backends[i]
        if not (req and req:tried(b)) then
            if b.healthy then
                healthy[#healthy + 1] = b
            else
                other[#other + 1] = b
            end
        end
    end
    return #healthy > 0 and healthy or other
end

local function stand_ins()
    local rr = 0
    local s = {}

    --- Stand-in: in turn over the candidates.
    function s.round_robin(backends, req)
        local c = candidates(backends, req)
        if #c == 0 then return nil end
        rr = rr + 1
        return c[(rr - 1) % #c + 1]
    end

    --- Stand-in: uniformly at random (math.random).
    function s.random(backends, req)
        local c = candidates(backends, req)
        if #c == 0 then return nil end
        return c[random(#c)]
    end

    --- Stand-in: lowest rif / weight, first on ties.
    function s.least_conn(backends, req)
        local c = candidates(backends, req)
        local best, best_score
        for i = 1, #c do
            local score = c[i].rif / c[i].weight
            if best == nil or score < best_score then
                best, best_score = c[i], score
            end
        end
        return best
    end

    --- Stand-in for Prequal without a probe pool: the load of a backend is probe_rif (else
    -- rif) and its latency probe_latency_ms (else latency_ms). Cold backends have a load at or
    -- below the 0.84 quantile of the candidates' loads; it picks the cold one with the lowest
    -- latency, at random among equals.
    function s.prequal(backends, req)
        local c = candidates(backends, req)
        local n = #c
        if n == 0 then return nil end
        if n == 1 then return c[1] end
        local loads = {}
        for i = 1, n do
            loads[i] = c[i].probe_rif or c[i].rif
        end
        local sorted = { unpack(loads) }
        sort(sorted)
        local q = sorted[math.max(1, math.ceil(0.84 * n))]
        local best, best_lat, ties = {}, nil, 0
        for i = 1, n do
            if loads[i] <= q then
                local lat = c[i].probe_latency_ms or c[i].latency_ms
                if best_lat == nil or lat < best_lat then
                    best_lat, ties = lat, 1
                    best[1] = c[i]
                elseif lat == best_lat then
                    ties = ties + 1
                    best[ties] = c[i]
                end
            end
        end
        return best[random(ties)]
    end

    return s
end

--- Installs a fake global `gw`:
-- `gw.log.debug/info/warn/err(...)` append to `gw.test.logs` (arguments converted with
-- tostring and joined with spaces, as the runtime does); `gw.now()` returns `opts.now()` or a fake clock
-- starting at 1000.0 that `gw.test.advance` moves; `gw.json` is cjson; `gw.worker.id` is
-- `opts.worker_id` (0); `gw.strategy.round_robin/random/least_conn/prequal` are simple Lua
-- STAND-INS for the native strategies (same contract as core/lb.h: skip tried backends,
-- prefer healthy ones; see the functions above for how each picks), which
-- `opts.strategies = { name = fn }` may replace or extend.
-- @return the fake gw
function M.install_gw(opts)
    opts = opts or {}
    if opts.now ~= nil and type(opts.now) ~= "function" then
        error("gw.test.install_gw: now must be a function", 2)
    end
    for i = #M.logs, 1, -1 do
        M.logs[i] = nil
    end
    fake_time = 1000.0
    local function logger(level)
        return function(...)
            local parts = {}
            for i = 1, select("#", ...) do
                parts[i] = tostring((select(i, ...)))
            end
            M.logs[#M.logs + 1] = { level = level, message = concat(parts, " ") }
        end
    end
    local strategy = stand_ins()
    for name, fn in pairs(opts.strategies or {}) do
        strategy[name] = fn
    end
    local g = {
        log = { debug = logger("debug"), info = logger("info"), warn = logger("warn"),
                err = logger("err") },
        now = opts.now or function() return fake_time end,
        json = cjson,
        worker = { id = opts.worker_id or 0 },
        strategy = strategy,
        RESPONDED = M.RESPONDED,
    }
    custom_clock = opts.now ~= nil
    rawset(_G, "gw", g)
    M.gw = g
    return g
end

--- Removes the global `gw`.
function M.uninstall_gw()
    rawset(_G, "gw", nil)
    M.gw = nil
end

--- Moves the fake clock forward by `seconds` (only when install_gw got no `now`).
function M.advance(seconds)
    if custom_clock then
        error("gw.test.advance: install_gw was given its own now()", 2)
    end
    fake_time = fake_time + seconds
end

--- The fake clock's current time.
function M.time()
    return fake_time
end

--- Whether a log line at `level` (or any level when nil) matches the Lua pattern `pattern`.
function M.logged(level, pattern)
    for _, l in ipairs(M.logs) do
        if (level == nil or l.level == level) and find(l.message, pattern) then
            return true
        end
    end
    return false
end

return M
