--- hooks.chain: run several hooks where a route takes one function.
--
-- A route has one `on_request`, one `on_response`, one `rewrite_path` and one `on_log`. These
-- helpers combine several hooks into one, in the order given:
--
--  * `chain.on_request(f, g, ...)`: runs each until one ends the request, and returns what that
--    one returned (`status, body, headers`); nil when all continue.
--  * `chain.on_response(f, g, ...)` and `chain.on_log(f, g, ...)`: run all of them.
--  * `chain.rewrite_path(f, g, ...)`: feeds each the path the previous one produced; returns
--    the final path, or nil when none changed it.
--
-- A hook that answers must `return req:respond(...)` (or return status, body, headers): the
-- chain stops at the first hook that returns something, and cannot see a respond() whose
-- result was dropped.
--
-- An argument may be a function, a table holding the matching hook (what `cors.new{}` and
-- friends return; a table without that hook is skipped), or nil (skipped), so optional hooks
-- can be written inline.
--
-- Example:
--
--     local chain = require("hooks.chain")
--     on_request  = chain.on_request(cors, limiter, auth, errors),
--     on_response = chain.on_response(cors, errors),
--
-- @module hooks.chain

local type, select, error, format = type, select, error, string.format

local M = {}

local function collect(key, ...)
    local fns = {}
    for i = 1, select("#", ...) do
        local h = select(i, ...)
        local t = type(h)
        if t == "function" then
            fns[#fns + 1] = h
        elseif t == "table" then
            local f = h[key]
            if f ~= nil then
                if type(f) ~= "function" then
                    error(format("chain.%s: argument %d: %s is not a function", key, i, key), 3)
                end
                fns[#fns + 1] = f
            end
        elseif h ~= nil then
            error(format("chain.%s: argument %d: expected a function or a table, got %s",
                key, i, t), 3)
        end
    end
    return fns
end

--- Combines on_request hooks; the first that returns a status ends the request.
function M.on_request(...)
    local fns = collect("on_request", ...)
    local n = #fns
    return function(req)
        for i = 1, n do
            local status, body, headers = fns[i](req)
            if status ~= nil then
                return status, body, headers
            end
        end
        return nil
    end
end

local function all(key, ...)
    local fns = collect(key, ...)
    local n = #fns
    return function(res)
        for i = 1, n do
            fns[i](res)
        end
    end
end

--- Combines on_response hooks; all run, in order.
function M.on_response(...)
    return all("on_response", ...)
end

--- Combines on_log hooks; all run, in order.
function M.on_log(...)
    return all("on_log", ...)
end

--- Combines rewrite_path hooks, each seeing the path the previous one produced.
function M.rewrite_path(...)
    local fns = collect("rewrite_path", ...)
    local n = #fns
    return function(path, req)
        local changed = false
        for i = 1, n do
            local new = fns[i](path, req)
            if new ~= nil then
                path, changed = new, true
            end
        end
        if changed then
            return path
        end
        return nil
    end
end

return M
