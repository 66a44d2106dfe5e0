--- hooks.cors: Cross-Origin Resource Sharing for a route.
--
-- `on_request` answers preflights itself: an OPTIONS request with both `Origin` and
-- `Access-Control-Request-Method` gets 204 with the `Access-Control-Allow-*` headers when the
-- origin, the method and the requested headers are allowed, and 403 (JSON
-- `{"error":"forbidden",...}`) when they are not; a preflight never reaches the backend. Other
-- OPTIONS requests and all other methods go on. For an allowed origin, `on_response` adds
-- `Access-Control-Allow-Origin`, `Access-Control-Allow-Credentials` and
-- `Access-Control-Expose-Headers` to the backend's response (replacing any the backend sent).
--
-- Install BOTH hooks on the route: the response hook learns the request's origin from
-- `req.ctx`, which only the request hook fills (`res` cannot see request headers).
--
-- Options:
--
--  * `origins` (required): `"*"` (any origin), a list of exact origins
--    `{ "https://a.example" }` (scheme://host[:port], as browsers send them), or a function
--    `fn(origin) -> bool`.
--  * `methods` ({"GET","HEAD","POST","PUT","PATCH","DELETE"}): allowed request methods.
--  * `headers` (nil): allowed request headers; nil allows whatever a preflight asks for.
--  * `expose` ({}): response headers scripts may read.
--  * `credentials` (false): send `Access-Control-Allow-Credentials: true`. Browsers refuse
--    `*` with credentials, so with `origins = "*"` and credentials the origin is echoed.
--  * `max_age` (600): seconds a browser may cache a preflight; false omits the header.
--
-- The allowed origin is echoed (with `Vary: Origin`, so caches keep one copy per origin)
-- unless origins is `"*"` without credentials, where the answer is the literal `*`.
--
-- Example:
--
--     local cors = require("hooks.cors").new{ origins = { "https://app.example" },
--                                             credentials = true, expose = { "X-Request-Id" } }
--     { match = { path_prefix = "/api/" }, upstream = "app",
--       on_request = cors.on_request, on_response = cors.on_response }
--
-- @module hooks.cors

local type, ipairs, error, tostring = type, ipairs, error, tostring
local lower, gmatch, gsub, format, concat = string.lower, string.gmatch, string.gsub,
    string.format, table.concat

local M = {}

-- The key under which on_request leaves the allowed origin in req.ctx for on_response.
-- A table, so it cannot collide with anyone else's ctx keys.
local ORIGIN = {}

local DEFAULT_METHODS = { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE" }

local function string_list(v, what)
    if type(v) ~= "table" then
        error(format("cors.new: %s must be a list of strings", what), 4)
    end
    for i, s in ipairs(v) do
        if type(s) ~= "string" or s == "" then
            error(format("cors.new: %s[%d] must be a non-empty string", what, i), 4)
        end
    end
    return v
end

local function lower_set(list)
    local set = {}
    for _, s in ipairs(list) do
        set[lower(s)] = true
    end
    return set
end

local function trim(s)
    return (gsub(s, "^%s*(.-)%s*$", "%1"))
end

-- Whether a comma-separated header value contains `token` (case-insensitive).
local function has_token(value, token)
    for part in gmatch(value, "[^,]+") do
        local t = lower(trim(part))
        if t == token or t == "*" then
            return true
        end
    end
    return false
end

local function add_vary_origin(res)
    if res:header("Vary") == nil then
        res:set_header("Vary", "Origin")
    elseif not has_token(res:headers().vary, "origin") then
        res:add_header("Vary", "Origin")
    end
end

local function build(opts)
    if type(opts) ~= "table" then
        error("cors.new: options table expected", 3)
    end
    local o = opts.origins
    local any_origin, allowed
    if o == "*" then
        any_origin = true
        allowed = function() return true end
    elseif type(o) == "function" then
        allowed = o
    elseif type(o) == "table" then
        local set = {}
        for _, origin in ipairs(string_list(o, "origins")) do
            set[origin] = true
        end
        allowed = function(origin) return set[origin] == true end
    else
        error("cors.new: origins must be \"*\", a list of origins or a function", 3)
    end

    local methods = string_list(opts.methods or DEFAULT_METHODS, "methods")
    local headers = opts.headers and string_list(opts.headers, "headers")
    local expose = string_list(opts.expose or {}, "expose")
    local max_age = opts.max_age
    if max_age == nil then
        max_age = 600
    end
    if max_age ~= false and (type(max_age) ~= "number" or max_age < 0) then
        error("cors.new: max_age must be a number of seconds or false", 3)
    end
    local c = {
        allowed = allowed,
        credentials = opts.credentials and true or false,
        -- echo the origin unless a literal "*" is allowed
        echo = not (any_origin and not opts.credentials),
        method_set = lower_set(methods),
        methods = concat(methods, ", "),
        header_set = headers and lower_set(headers),
        headers = headers and concat(headers, ", "),
        expose = #expose > 0 and concat(expose, ", ") or nil,
        max_age = max_age ~= false and tostring(math.floor(max_age)) or nil,
    }
    return c
end

local function forbidden(req, message)
    return 403, { error = "forbidden", message = message, request_id = req:id() }
end

--- Builds the hooks.
-- @tparam table opts see the module comment
-- @return `{ on_request = fn(req), on_response = fn(res) }`
function M.new(opts)
    local c = build(opts)

    local function on_request(req)
        local origin = req:header("Origin")
        if origin == nil then
            return nil
        end
        local ok = c.allowed(origin) and true or false
        local acrm = req:method() == "OPTIONS" and req:header("Access-Control-Request-Method")
        if not acrm then
            if ok then
                req.ctx[ORIGIN] = origin
            end
            return nil
        end
        -- A preflight.
        if not ok then
            return forbidden(req, "CORS preflight: origin not allowed")
        end
        if not c.method_set[lower(acrm)] then
            return forbidden(req, "CORS preflight: method not allowed")
        end
        local h = {
            ["Access-Control-Allow-Origin"] = c.echo and origin or "*",
            ["Access-Control-Allow-Methods"] = c.methods,
        }
        local requested = req:header("Access-Control-Request-Headers")
        if c.header_set then
            if requested then
                for name in gmatch(requested, "[^,]+") do
                    name = lower(trim(name))
                    if name ~= "" and not c.header_set[name] then
                        return forbidden(req, "CORS preflight: header not allowed: " .. name)
                    end
                end
            end
            h["Access-Control-Allow-Headers"] = c.headers
        elseif requested and trim(requested) ~= "" then
            h["Access-Control-Allow-Headers"] = requested
        end
        if c.echo then
            h["Vary"] = "Origin"
        end
        if c.credentials then
            h["Access-Control-Allow-Credentials"] = "true"
        end
        if c.max_age then
            h["Access-Control-Max-Age"] = c.max_age
        end
        return 204, "", h
    end

    local function on_response(res)
        if c.echo then
            add_vary_origin(res)
        end
        local origin = res.ctx[ORIGIN]
        if origin == nil then
            return
        end
        res:set_header("Access-Control-Allow-Origin", c.echo and origin or "*")
        if c.credentials then
            res:set_header("Access-Control-Allow-Credentials", "true")
        end
        if c.expose then
            res:set_header("Access-Control-Expose-Headers", c.expose)
        end
    end

    return { on_request = on_request, on_response = on_response }
end

return M
