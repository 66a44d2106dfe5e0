--- hooks.rewrite: path rewrites and redirects with Lua patterns.
--
-- `rewrite.new(rules)` returns a `rewrite_path` hook: the first rule whose Lua pattern matches
-- the path (the one going upstream, after `strip_prefix`/`add_prefix`) replaces it with
-- `string.gsub(path, pattern, replacement, 1)`; with no match the path is kept. Replacements
-- use gsub's syntax: `%1`..`%9` for captures, `%0` for the whole match, `%%` for a percent
-- sign; a function or table replacement works as it does for gsub. Anchor patterns with `^`
-- and `$` (a pattern like "/old/" matches anywhere in the path) and escape magic characters
-- (`%-`, `%.`). The result must be a path: start with "/" and hold no whitespace.
--
-- `rewrite.redirect(rules)` returns an `on_request` hook that answers a matching request with
-- a redirect (`Location` = the substituted target) instead of proxying it. It matches the
-- client's path (`req:orig_path()`), since that is what the client asked for; the query string
-- is appended to the target unless the rule says `keep_query = false` or the target already
-- has one. A rule's `status` may be 301 (default), 302, 303, 307 or 308.
--
-- Example:
--
--     local rewrite = require("hooks.rewrite")
--     { match = { path_prefix = "/" }, upstream = "app",
--       rewrite_path = rewrite.new{ { "^/v1/(.*)$", "/api/%1" }, { "^/health$", "/healthz" } },
--       on_request = rewrite.redirect{ { "^/old/(.*)$", "/new/%1", status = 308 },
--                                      { "^/docs$", "https://docs.example/" } } }
--
-- @module hooks.rewrite

local type, ipairs, error, tonumber, format = type, ipairs, error, tonumber, string.format
local gsub, find, gmatch, sub = string.gsub, string.find, string.gmatch, string.sub

local M = {}

local REDIRECT_STATUS = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }

-- Checks the syntax of a Lua pattern, which Lua itself only does when matching reaches the
-- bad part. Returns the number of captures, or nil and a message.
local function check_pattern(p)
    local i, n, depth, captures = 1, #p, 0, 0
    while i <= n do
        local c = sub(p, i, i)
        if c == "%" then
            local d = sub(p, i + 1, i + 1)
            if d == "" then
                return nil, "ends with '%'"
            elseif d == "b" then
                if i + 3 > n then
                    return nil, "missing arguments to '%b'"
                end
                i = i + 4
            elseif d == "f" then
                if sub(p, i + 2, i + 2) ~= "[" then
                    return nil, "missing '[' after '%f'"
                end
                i = i + 2
            else
                i = i + 2
            end
        elseif c == "[" then
            local j = i + 1
            if sub(p, j, j) == "^" then
                j = j + 1
            end
            repeat -- as lstrlib's classEnd: the first character may be a literal ']'
                if j > n then
                    return nil, "missing ']'"
                end
                if sub(p, j, j) == "%" then
                    if j == n then
                        return nil, "ends with '%'"
                    end
                    j = j + 2
                else
                    j = j + 1
                end
            until sub(p, j, j) == "]"
            i = j + 1
        elseif c == "(" then
            depth, captures = depth + 1, captures + 1
            i = i + 1
        elseif c == ")" then
            depth = depth - 1
            if depth < 0 then
                return nil, "invalid pattern capture"
            end
            i = i + 1
        else
            i = i + 1
        end
    end
    if depth ~= 0 then
        return nil, "unfinished capture"
    end
    return captures
end

local function compile(rules, what)
    if type(rules) ~= "table" or #rules == 0 then
        error(what .. ": a non-empty list of { pattern, replacement } rules expected", 3)
    end
    local out = {}
    for i, rule in ipairs(rules) do
        if type(rule) ~= "table" then
            error(format("%s: rule %d must be a table", what, i), 3)
        end
        local pattern, repl = rule[1], rule[2]
        if type(pattern) ~= "string" then
            error(format("%s: rule %d: pattern must be a string", what, i), 3)
        end
        local tr = type(repl)
        if tr ~= "string" and tr ~= "function" and tr ~= "table" then
            error(format("%s: rule %d: replacement must be a string, function or table", what, i),
                3)
        end
        -- A malformed pattern or a bad %n in the replacement would otherwise fail per request.
        local captures, err = check_pattern(pattern)
        if not captures then
            error(format("%s: rule %d: bad pattern %q: %s", what, i, pattern, err), 3)
        end
        if tr == "string" then
            local bad = false
            for c in gmatch(repl, "%%(.?)") do
                if not find(c, "^[%d%%]$") or (c ~= "%" and tonumber(c) > math.max(1, captures)) then
                    bad = true
                end
            end
            if bad then
                error(format("%s: rule %d: bad replacement %q (%%1..%%9 up to the number of " ..
                    "captures, %%0, or %%%% for a percent sign)", what, i, repl), 3)
            end
        end
        out[i] = { pattern = pattern, repl = repl, status = rule.status,
                   keep_query = rule.keep_query ~= false }
    end
    return out
end

--- Builds a rewrite_path hook.
-- @tparam table rules a list of `{ pattern, replacement }`
-- @return fn(path, req) -> new path or nil
function M.new(rules)
    local compiled = compile(rules, "rewrite.new")
    local n = #compiled
    return function(path)
        for i = 1, n do
            local r = compiled[i]
            local new, count = gsub(path, r.pattern, r.repl, 1)
            if count > 0 then
                return new
            end
        end
        return nil
    end
end

--- Builds an on_request hook answering redirects.
-- @tparam table rules a list of `{ pattern, target, status = 301, keep_query = true }`
-- @return fn(req)
function M.redirect(rules)
    local compiled = compile(rules, "rewrite.redirect")
    for i, r in ipairs(compiled) do
        r.status = r.status or 301
        if not REDIRECT_STATUS[r.status] then
            error(format("rewrite.redirect: rule %d: status must be 301, 302, 303, 307 or 308", i),
                2)
        end
    end
    local n = #compiled
    return function(req)
        local path = req:orig_path()
        for i = 1, n do
            local r = compiled[i]
            local target, count = gsub(path, r.pattern, r.repl, 1)
            if count > 0 then
                if r.keep_query and not find(target, "?", 1, true) then
                    local q = req:query()
                    if q ~= "" then
                        target = target .. "?" .. q
                    end
                end
                -- Captures come from the parsed path, but a table or function replacement
                -- could still produce something unsafe in a header.
                if find(target, "[%c]") then
                    return nil
                end
                return r.status, "", { Location = target }
            end
        end
        return nil
    end
end

return M
