--- hooks.json_errors: turn a backend's non-JSON error pages into JSON.
--
-- For a response with status >= 400 that came from a backend (`res:source() == "upstream"`)
-- and whose Content-Type is not JSON (`application/json` or any `+json` type), `on_response`
-- replaces the body with
--
--     {"error":"not_found","status":404,"message":"Not Found","request_id":"..."}
--
-- and sets `Content-Type: application/json`. `error` is a snake_case code name, `message` comes
-- from `messages[status]` or the standard reason phrase. The backend's original body is dropped
-- (error pages often carry stack traces). Gateway-generated responses are JSON already and are
-- left alone.
--
-- The body can only be replaced on routes with `buffer_response = true`. Elsewhere the body is
-- already streaming to the client when on_response runs (`res:body()` returns nil), so the hook
-- only adds `X-Error-Format: passthrough` to say the error was passed through unchanged.
--
-- `res` has no request id, so `on_request` (install it too) keeps `req:id()` in `req.ctx`;
-- without it the hook falls back to the response's `X-Request-Id` header.
--
-- Options:
--
--  * `include_request_id` (true): add `request_id`.
--  * `messages` ({}): status -> message, e.g. `{ [404] = "no such resource" }`.
--
-- Example:
--
--     local errors = require("hooks.json_errors").new{ messages = { [502] = "try again" } }
--     { match = { path_prefix = "/api/" }, upstream = "app", buffer_response = true,
--       on_request = errors.on_request, on_response = errors.on_response }
--
-- @module hooks.json_errors

local type, pairs, error = type, pairs, error
local lower, find, gsub, match = string.lower, string.find, string.gsub, string.match

local M = {}

local REQUEST_ID = {} -- private req.ctx key

--- Standard reason phrases of the error statuses.
M.reasons = {
    [400] = "Bad Request", [401] = "Unauthorized", [402] = "Payment Required",
    [403] = "Forbidden", [404] = "Not Found", [405] = "Method Not Allowed",
    [406] = "Not Acceptable", [407] = "Proxy Authentication Required",
    [408] = "Request Timeout", [409] = "Conflict", [410] = "Gone", [411] = "Length Required",
    [412] = "Precondition Failed", [413] = "Content Too Large", [414] = "URI Too Long",
    [415] = "Unsupported Media Type", [416] = "Range Not Satisfiable",
    [417] = "Expectation Failed", [418] = "I'm a teapot", [421] = "Misdirected Request",
    [422] = "Unprocessable Content", [423] = "Locked", [424] = "Failed Dependency",
    [425] = "Too Early", [426] = "Upgrade Required", [428] = "Precondition Required",
    [429] = "Too Many Requests", [431] = "Request Header Fields Too Large",
    [451] = "Unavailable For Legal Reasons", [500] = "Internal Server Error",
    [501] = "Not Implemented", [502] = "Bad Gateway", [503] = "Service Unavailable",
    [504] = "Gateway Timeout", [505] = "HTTP Version Not Supported",
    [506] = "Variant Also Negotiates", [507] = "Insufficient Storage", [508] = "Loop Detected",
    [510] = "Not Extended", [511] = "Network Authentication Required",
}

--- The code name of a status: "not_found" for 404, "client_error"/"server_error" if unknown.
function M.code(status)
    local reason = M.reasons[status]
    if reason then
        return (gsub(gsub(lower(reason), "'", ""), "[^%w]+", "_"))
    end
    return status < 500 and "client_error" or "server_error"
end

local function is_json(ct)
    if ct == nil then
        return false
    end
    local mt = match(lower(ct), "^%s*([^;%s]+)")
    return mt ~= nil and (mt == "application/json" or find(mt, "^[%w%.%-]+/[%w%.%-]*%+json$") ~= nil)
end

--- Builds the hooks.
-- @tparam table opts see the module comment (may be nil)
-- @return `{ on_request = fn(req), on_response = fn(res) }`
function M.new(opts)
    opts = opts or {}
    if type(opts) ~= "table" then
        error("json_errors.new: options table expected", 2)
    end
    local include_id = opts.include_request_id ~= false
    local messages = opts.messages or {}
    if type(messages) ~= "table" then
        error("json_errors.new: messages must be a table status -> string", 2)
    end
    for k, v in pairs(messages) do
        if type(k) ~= "number" or type(v) ~= "string" then
            error("json_errors.new: messages must map statuses to strings", 2)
        end
    end

    local function on_request(req)
        if include_id then
            req.ctx[REQUEST_ID] = req:id()
        end
        return nil
    end

    local function on_response(res)
        local status = res:status()
        if status < 400 or res:source() ~= "upstream" or is_json(res:header("Content-Type")) then
            return
        end
        if res:body() == nil then
            res:set_header("X-Error-Format", "passthrough")
            return
        end
        local doc = {
            error = M.code(status),
            status = status,
            message = messages[status] or M.reasons[status] or M.code(status),
        }
        if include_id then
            doc.request_id = res.ctx[REQUEST_ID] or res:header("X-Request-Id")
        end
        res:set_body(gw.json.encode(doc))
        res:set_header("Content-Type", "application/json")
    end

    return { on_request = on_request, on_response = on_response }
end

-- Exposed for tests.
M._is_json = is_json

return M
