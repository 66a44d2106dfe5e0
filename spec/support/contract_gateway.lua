--- spec/support/contract_gateway.lua: runs spec/support/contract.lua INSIDE prequal-gw, on the
-- real FFI objects of lua/gw/init.lua.
--
-- Each HTTP request names its case in the X-Contract-Case header. The case runs in a coroutine
-- started by on_request: make_req() is the live req; run_hook("on_request", fn) makes the
-- on_request hook return what fn returned (so the runtime answers) and resumes in on_response;
-- make_res() lets the request go upstream and resumes in on_response with the live res. The
-- on_response hook finally reports `{ case, done, failures, wires }` as JSON in the
-- X-Contract-Result response header, which the spec checks (with the wire expectations
-- against the HTTP response it got).
--
-- Requests are sent one at a time (workers = 1), so one case is in flight at a time.
local contract = require("support.contract")
local cjson = require("cjson")

local M = {}

function M.new(env)
    local current -- { t, co, phase, answered }
    local live_req, live_res

    local function view_of(res)
        return { status = res:status(), headers = res:headers(), source = res:source() }
    end

    local function make_req()
        if live_req == nil then error("make_req outside on_request", 2) end
        return live_req
    end

    local function make_res()
        if current.phase == "request" then
            coroutine.yield({ kind = "continue" })
        end
        return live_res
    end

    local function run_hook(kind, fn, req)
        assert(kind == "on_request", "only on_request hooks are run")
        assert(current.phase == "request", "run_hook after the request phase")
        local r = { n = 0 }
        r = (function(...) return { n = select("#", ...), ... } end)(fn(req))
        coroutine.yield({ kind = "answer", values = r })
        return view_of(live_res)
    end

    local cases = contract.contract(make_req, make_res, run_hook)
    local by_name = {}
    for _, c in ipairs(cases) do by_name[c.name] = c end

    local function step(...)
        local ok, what = coroutine.resume(current.co, ...)
        if not ok then
            current.t.fail("case raised", tostring(what))
            return nil
        end
        return what
    end

    local H = {}

    function H.on_request(req)
        live_req, live_res = req, nil
        local name = req:header(contract.CASE_HEADER)
        local c = by_name[name or ""]
        current = { t = contract.reporter("ffi", env), phase = "request", name = name }
        if not c then
            current.t.fail("driver", "no case " .. tostring(name))
            return nil
        end
        current.co = coroutine.create(function() c.run(current.t) end)
        local what = step()
        live_req = nil
        if what and what.kind == "answer" then
            return unpack(what.values, 1, what.values.n)
        end
        return nil
    end

    function H.on_response(res)
        live_res = res
        if current == nil then return end
        current.phase = "response"
        if current.co and coroutine.status(current.co) == "suspended" then
            local what = step()
            if what ~= nil and coroutine.status(current.co) ~= "dead" then
                current.t.fail("driver", "the case yielded again in on_response")
            end
        end
        local done = current.co ~= nil and coroutine.status(current.co) == "dead"
        local report = cjson.encode({ case = current.name, done = done,
            failures = current.t.failures, wires = current.t.wires })
        local ok, err = res:set_header("X-Contract-Result", report)
        if not ok then
            res:set_header("X-Contract-Result", cjson.encode({ case = current.name, done = false,
                failures = { "driver: could not report: " .. tostring(err) }, wires = {} }))
        end
        current, live_res = nil, nil
    end

    return H
end

return M
