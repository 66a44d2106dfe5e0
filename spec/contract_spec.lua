-- The API contract (spec/support/contract.lua), run twice: against gw.test in-process, and
-- against the real FFI API (lua/gw/init.lua) inside prequal-gw, whose hooks run the very same
-- cases and report back in a response header (spec/support/contract_gateway.lua).
-- Differences the two implementations are allowed to have are spelled out in the contract.
local contract = require("support.contract")
local gwt = require("gw.test")
local cjson = require("cjson")
local E = require("support.e2e")

local FAKE_BACKEND = "http://127.0.0.1:9"

-- The header list a case's request has on the wire (E.request adds Connection: close last).
local function wire_headers(c)
    local h = {}
    for i, p in ipairs(c.request.headers) do h[i] = { p[1], p[2] } end
    h[#h + 1] = { contract.CASE_HEADER, c.name }
    return h
end

local function lower_map(headers)
    local t = {}
    for k, v in pairs(headers or {}) do t[k:lower()] = v end
    return t
end

local function fail_report(failures)
    return "\n  " .. table.concat(failures, "\n  ")
end

describe("API contract against gw.test", function()
    -- The in-process adapters: per case, the request, the last answer and the last res.
    local state
    local function make_req()
        local c = state.case
        local headers = { { "Host", contract.HOST } }
        for _, p in ipairs(wire_headers(c)) do headers[#headers + 1] = p end
        headers[#headers + 1] = { "Connection", "close" }
        state.req = gwt.request{ method = c.request.method, path = c.request.path, headers = headers }
        return state.req
    end
    local function make_res(req, opts)
        if state.answer then
            local a = state.answer
            local list = {}
            for k, v in pairs(a.headers) do list[#list + 1] = { k, v } end
            state.res = gwt.response{ status = a.status, headers = list, ctx = req.ctx }
        else
            state.res = gwt.response{ status = (opts and opts.status) or 200, backend = FAKE_BACKEND,
                headers = { { "Server", "pgw-backend" }, { "X-Backend", "b1" },
                            { "Content-Type", "application/json" } },
                ctx = req.ctx }
        end
        return state.res
    end
    local function run_hook(kind, fn, req)
        assert(kind == "on_request")
        local ok, r = pcall(gwt.run_on_request, fn, req)
        if not ok then
            -- what the runtime does with a hook error: a generic JSON 500
            r = { status = 500, headers = { ["Content-Type"] = "application/json" } }
        end
        assert(r, "the hook did not answer")
        state.answer = { status = r.status, headers = r.headers, body = r.body }
        return { status = r.status, headers = lower_map(r.headers), source = "gateway" }
    end

    before_each(function() gwt.install_gw() end)
    after_each(function() gwt.uninstall_gw() end)

    for _, c in ipairs(contract.contract(make_req, make_res, run_hook)) do
        it(c.name, function()
            state = { case = c }
            local t = contract.reporter("gw.test", { backend_url = FAKE_BACKEND })
            local ok, err = pcall(c.run, t)
            if not ok then t.fail("case raised", tostring(err)) end
            for _, w in ipairs(t.wires) do
                local got
                if state.res then
                    got = { status = state.res:status(), headers = state.res:headers(),
                            body = state.answer and state.answer.body }
                elseif state.answer then
                    got = { status = state.answer.status, headers = lower_map(state.answer.headers),
                            body = state.answer.body }
                else
                    got = { status = nil, headers = {} }
                end
                for _, f in ipairs(contract.check_wire(w, got)) do t.failures[#t.failures + 1] = f end
            end
            assert(#t.failures == 0, fail_report(t.failures))
        end)
    end
end)

describe("API contract against the real FFI API in prequal-gw", function()
    local missing = E.missing()
    if missing then
        pending(missing)
        return
    end

    local gwp, b1

    setup(function()
        local ok, err = pcall(function()
            local dir = E.tmpdir()
            b1 = E.start_backend(dir, "b1")
            gwp = E.start_gateway(dir, ([[
package.path = %q .. package.path
local driver = require("support.contract_gateway").new{ backend_url = %q }
return {
    listen = "127.0.0.1:%%PORT%%",
    workers = 1,
    admin = { listen = "127.0.0.1:%%ADMIN%%" },
    log_level = "warn",
    upstreams = { app = { strategy = "round_robin", backends = { %q } } },
    routes = { { name = "contract", match = { path_prefix = "/" }, upstream = "app",
                 on_request = driver.on_request, on_response = driver.on_response } },
}
]]):format(E.root .. "/spec/?.lua;", b1.url, b1.url))
        end)
        if not ok then
            E.stop_all()
            error(err, 0)
        end
    end)

    teardown(function() E.stop_all() end)

    -- Names only: the real adapters live in the gateway.
    for _, c in ipairs(contract.contract()) do
        it(c.name, function()
            finally(function()
                -- nothing per test; the processes go in teardown (and here if setup half-ran)
                if gwp == nil then E.stop_all() end
            end)
            local r = E.request(gwp.port, { method = c.request.method, path = c.request.path,
                host = contract.HOST, headers = wire_headers(c) })
            local raw = r.headers["x-contract-result"]
            assert(raw, "no X-Contract-Result in the response (did the hook run?):\n" .. r.raw ..
                "\n--- gateway log:\n" .. (E.read_file(gwp.log) or ""))
            local report = cjson.decode(raw)
            local failures = {}
            for _, f in ipairs(report.failures) do failures[#failures + 1] = f end
            if not report.done then failures[#failures + 1] = "the case did not finish" end
            if report.case ~= c.name then failures[#failures + 1] = "ran case " .. tostring(report.case) end
            for _, w in ipairs(report.wires) do
                for _, f in ipairs(contract.check_wire(w, r)) do failures[#failures + 1] = f end
            end
            assert(#failures == 0, fail_report(failures))
        end)
    end
end)
