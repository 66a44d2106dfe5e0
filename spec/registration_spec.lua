-- End-to-end specs for run-time membership (DESIGN §5, §6, §8): the real prequal-gw with a
-- `registration` table and an upstream that starts empty, real pgw-backend processes that join
-- and leave through the admin API (POST /register, /unregister, TTL expiry), and the library's
-- Lua strategies and a user's membership hooks reacting to it.
--
-- Binaries: PGW_BIN (default build/prequal-gw) and PGW_BACKEND (default: pgw-backend next to
-- PGW_BIN, else build/pgw-backend); when either is missing every spec here is pending. Every
-- process started is killed in teardown (PGW_E2E_KEEP=1 keeps the temp dir with the logs).
--
-- Workers learn of a membership change asynchronously, so every spec waits (`eventually`, up
-- to WAIT seconds) for the change to show in the traffic before asserting on it.
local E = require("support.e2e")
local gwt = require("gw.test")
local cjson = require("cjson")
local socket = require("socket")
local deep_eq = require("support.contract").deep_eq

-- pgw-backend is built next to prequal-gw: prefer that one when PGW_BACKEND is not set.
local saved_backend_bin = E.backend_bin
if os.getenv("PGW_BACKEND") == nil then
    local sibling = (E.bin:match("^(.*)/[^/]+$") or ".") .. "/pgw-backend"
    local rc = os.execute("test -x " .. E.quote(sibling))
    if rc == 0 or rc == true then
        E.backend_bin = sibling
    end
end

local missing = E.missing()

local WAIT = 2 -- seconds a membership change may take to reach the worker (~1 s documented)

--- Calls `fn` until it returns a true value or `timeout` seconds pass; returns its last result.
local function eventually(fn, timeout)
    local deadline = socket.gettime() + (timeout or WAIT)
    while true do
        local v = fn()
        if v or socket.gettime() >= deadline then return v end
        socket.sleep(0.02)
    end
end

--- POST `path` on the admin port with a JSON body; returns the response with `.json` decoded.
local function admin_post(gwp, path, body, token)
    local headers = { { "Content-Type", "application/json" } }
    if token then headers[#headers + 1] = { "Authorization", "Bearer " .. token } end
    local r = E.request(gwp.admin, { method = "POST", path = path, headers = headers,
        body = type(body) == "string" and body or cjson.encode(body) })
    r.json = E.json(r)
    return r
end

--- Registers backend `b` ({ url, ... }) with extra JSON fields (upstream, weight, meta, ttl_ms).
local function register(gwp, b, fields, token)
    local body = { url = b.url }
    for k, v in pairs(fields or {}) do body[k] = v end
    return admin_post(gwp, "/register", body, token)
end

local function unregister(gwp, b, token)
    return admin_post(gwp, "/unregister", { url = b.url }, token)
end

--- The entries of upstream `name` in GET /status, by url.
local function status_backends(gwp, name)
    local r = E.request(gwp.admin, { path = "/status" })
    assert.are.equal(200, r.status)
    local out = {}
    for _, u in ipairs(E.json(r).upstreams) do
        if u.name == name then
            for _, b in ipairs(u.backends) do out[b.url] = b end
        end
    end
    return out
end

--- Asserts an admin reply: status and JSON `status` (success) or `error` (failure).
local function assert_reply(r, status, field, value)
    assert.are.equal(status, r.status, r.raw)
    assert.is_table(r.json, r.raw)
    assert.are.equal(value, r.json[field], r.raw)
end

--- Lines of the gateway's log (stdout+stderr) matching `pattern`.
local function log_lines(gwp, pattern)
    local out = {}
    for line in (E.read_file(gwp.log) or ""):gmatch("[^\n]+") do
        if line:find(pattern) then out[#out + 1] = line end
    end
    return out
end

local function count(set)
    local n = 0
    for _ in pairs(set) do n = n + 1 end
    return n
end

describe("e2e: run-time registration", function()
    if missing then
        pending(missing)
        return
    end

    local b = {}     -- name -> { name, port, url, pid }
    local name_of = {} -- url -> name
    local dir

    setup(function()
        local ok, err = pcall(function()
            dir = E.tmpdir()
            for i = 1, 5 do
                local n = "r" .. i
                b[n] = E.start_backend(dir, n)
                name_of[b[n].url] = n
            end
        end)
        if not ok then
            E.stop_all()
            error(err, 0)
        end
    end)

    teardown(function()
        E.stop_all()
        E.backend_bin = saved_backend_bin
    end)

    --- Starts a gateway: `prelude` (Lua before `return {`) and `body` (the table's fields after
    -- listen, workers and log_level).
    local function start(prelude, body)
        local config = prelude .. [[
return {
    listen = "127.0.0.1:%PORT%",
    workers = 1,
    log_level = "info",
]] .. body .. "\n}\n"
        return E.start_gateway(dir, config)
    end

    --- A GET through the gateway; returns the response and the backend's name (X-Backend).
    local function get(gwp, path, headers)
        local r = E.request(gwp.port, { path = path, headers = headers })
        return r, r.headers["x-backend"]
    end

    local function no_lua_errors(gwp)
        local log = E.read_file(gwp.log) or ""
        assert.is_nil(log:find("%[error%]"), log)
        local m = E.request(gwp.admin, { path = "/metrics" })
        assert.are.equal(200, m.status)
        for line in m.body:gmatch("[^\n]+") do
            if line:match("^gw_lua_errors_total") or line:match("^gw_lua_strategy_errors_total") then
                assert.matches(" 0$", line)
            end
        end
    end

    ------------------------------------------------------------------------------------------
    describe("strategies.consistent_hash over registered backends", function()
        local gwp
        local KEYS = 60
        local consistent_hash = require("strategies.consistent_hash")

        setup(function()
            gwp = start('local consistent_hash = require("strategies.consistent_hash")\n', [[
    admin = { listen = "127.0.0.1:%ADMIN%" },
    registration = { allow = { "127.0.0.0/8" }, ttl_ms = 30000, max_backends = 4, upstream = "api" },
    upstreams = { api = { strategy = consistent_hash.new{ header = "X-User" },
                          prequal = { probe_path = "/probe" }, backends = {} } },
    routes = { { match = { path_prefix = "/" }, upstream = "api" } },]])
        end)

        teardown(function()
            if gwp then E.kill(gwp.pid) end
        end)

        local function key(i) return "user-" .. i end

        -- key -> backend name, as the gateway routes it now (nil for a non-200).
        local function mapping()
            local m = {}
            for i = 1, KEYS do
                local r, who = get(gwp, "/s", { { "X-User", key(i) } })
                m[key(i)] = r.status == 200 and who or ("status " .. tostring(r.status))
            end
            return m
        end

        -- key -> backend name as the ring over `names` predicts it (it depends only on the urls
        -- and the weights: `weights` maps a name to its weight, 1 by default).
        local function predict(names, weights)
            gwt.install_gw()
            local urls = {}
            for i, n in ipairs(names) do
                urls[i] = { url = b[n].url, weight = weights and weights[n] or 1 }
            end
            local runner = gwt.strategy_runner(consistent_hash.new{ header = "X-User" },
                gwt.backends(urls), "api")
            local m = {}
            for i = 1, KEYS do
                local picked = runner:pick(gwt.request{ headers = { ["X-User"] = key(i) } })
                m[key(i)] = name_of[picked.url]
            end
            gwt.uninstall_gw()
            return m
        end

        -- Waits until the gateway routes every key as the ring over `names` predicts; returns
        -- the observed mapping (asserted equal to the prediction).
        local function settle(names, weights)
            local want = predict(names, weights)
            local got
            eventually(function()
                got = mapping()
                return deep_eq(got, want)
            end)
            assert.are.same(want, got)
            return got
        end

        local before, after_join
        local ids = {} -- name -> id given at the first registration

        it("answers 503 while the upstream has no members", function()
            local r = get(gwp, "/s", { { "X-User", "nobody" } })
            assert.are.equal(503, r.status)
        end)

        it("spreads keys over three registered backends", function()
            for i = 1, 3 do
                local r = register(gwp, b["r" .. i], { upstream = "api" })
                assert_reply(r, 201, "status", "registered")
                assert.are.equal(b["r" .. i].url, r.json.url)
                assert.are.equal("api", r.json.upstream)
                ids["r" .. i] = r.json.id
            end
            assert.are_not.equal(ids.r1, ids.r2)
            assert.are_not.equal(ids.r2, ids.r3)
            assert.are_not.equal(ids.r1, ids.r3)
            local st = status_backends(gwp, "api")
            for i = 1, 3 do
                local e = st[b["r" .. i].url]
                assert.is_table(e)
                assert.are.same({ ids["r" .. i], "registered", true },
                    { e.id, e.source, e.member })
            end
            before = settle({ "r1", "r2", "r3" })
            local used = {}
            for _, n in pairs(before) do used[n] = true end
            assert.are.same({ r1 = true, r2 = true, r3 = true }, used)
            -- and a key keeps its backend
            for i = 1, 5 do
                assert.are.equal(before[key(i)], select(2, get(gwp, "/s", { { "X-User", key(i) } })))
            end
        end)

        it("moves only a minority of keys, all to the new backend, when a fourth joins", function()
            assert.is_table(before, "needs the previous spec")
            assert_reply(register(gwp, b.r4), 201, "status", "registered") -- registration.upstream
            after_join = settle({ "r1", "r2", "r3", "r4" })
            local moved = 0
            for k, n in pairs(after_join) do
                if n ~= before[k] then
                    moved = moved + 1
                    assert.are.equal("r4", n, k .. " moved from " .. before[k] .. " to " .. n)
                end
            end
            assert.is_true(moved > 0, "no key moved to the new backend")
            assert.is_true(moved < KEYS / 2, moved .. " of " .. KEYS .. " keys moved")
        end)

        it("moves only the keys of a backend that leaves", function()
            assert.is_table(after_join, "needs the previous spec")
            assert_reply(unregister(gwp, b.r1), 200, "status", "unregistered")
            local after_leave = settle({ "r2", "r3", "r4" })
            local on_r1 = 0
            for k, n in pairs(after_leave) do
                assert.are_not.equal("r1", n)
                if after_join[k] == "r1" then
                    on_r1 = on_r1 + 1
                else
                    assert.are.equal(after_join[k], n, k .. " was not on r1 but moved")
                end
            end
            assert.is_true(on_r1 > 0, "r1 owned no key: the spec proves nothing")
            -- /status lists members only (and every static backend)
            assert.is_nil(status_backends(gwp, "api")[b.r1.url])
        end)

        it("gives the keys back when the backend registers again (same id)", function()
            local r = register(gwp, b.r1)
            assert_reply(r, 201, "status", "registered")
            assert.are.equal(ids.r1, r.json.id)
            assert.are.same(after_join, settle({ "r1", "r2", "r3", "r4" }))
            -- a heartbeat changes nothing
            assert_reply(register(gwp, b.r1), 200, "status", "renewed")
            assert.are.same(after_join, mapping())
        end)

        it("rebuilds the ring when a heartbeat changes a weight", function()
            local r = register(gwp, b.r2, { weight = 3 })
            assert_reply(r, 200, "status", "renewed")
            assert.are.equal(3, status_backends(gwp, "api")[b.r2.url].weight)
            -- (points scale with weight / mean weight, so the others' rings shrink too and a
            -- few keys change hands among them; the prediction covers that)
            local heavier = settle({ "r1", "r2", "r3", "r4" }, { r2 = 3 })
            local function on_r2(m)
                local n = 0
                for _, who in pairs(m) do
                    if who == "r2" then n = n + 1 end
                end
                return n
            end
            assert.is_true(on_r2(heavier) > on_r2(after_join), "r2 gained no key from weight 3")
        end)

        it("gives a new url the slot a leaver freed, and the ring follows the url", function()
            -- max_backends = 4 and r1..r4 are members: a fifth is refused
            assert_reply(register(gwp, b.r5), 503, "error", "full")
            assert_reply(unregister(gwp, b.r3), 200, "status", "unregistered")
            -- the slot is reused once the worker let go of r3 (until then: still full)
            local r = eventually(function()
                local x = register(gwp, b.r5)
                return x.status ~= 503 and x
            end)
            assert.is_table(r, "r5 never got r3's slot")
            assert_reply(r, 201, "status", "registered")
            assert.are.equal(ids.r3, r.json.id)
            -- same slot, same id, another url: the ring must be r5's, not r3's
            settle({ "r1", "r2", "r4", "r5" }, { r2 = 3 })
            -- and r3 finds no slot now
            assert_reply(register(gwp, b.r3), 503, "error", "full")
        end)

        it("logged no Lua errors", function()
            no_lua_errors(gwp)
        end)
    end)

    ------------------------------------------------------------------------------------------
    describe("strategies.zone_aware with zones from registered meta", function()
        local gwp

        setup(function()
            gwp = start('local zone_aware = require("strategies.zone_aware")\n', [[
    admin = { listen = "127.0.0.1:%ADMIN%", token = "t" },
    registration = { allow = { "127.0.0.0/8" }, ttl_ms = 30000, max_backends = 8, upstream = "api" },
    upstreams = { api = { strategy = zone_aware.new{ zone = "a", min_healthy = 1 },
                          prequal = { probe_path = "/probe" }, backends = {} } },
    routes = { { match = { path_prefix = "/" }, upstream = "api" } },]])
        end)

        teardown(function()
            if gwp then E.kill(gwp.pid) end
        end)

        -- The set of backends `n` requests went to (asserting each was answered 200).
        local function seen(n)
            local s = {}
            for _ = 1, n do
                local r, who = get(gwp, "/z")
                assert.are.equal(200, r.status, r.raw)
                s[who] = true
            end
            return s
        end

        local function first_reaches(names)
            return eventually(function()
                local r, who = get(gwp, "/z")
                return r.status == 200 and names[who]
            end)
        end

        it("needs the admin token", function()
            local r = register(gwp, b.r1, { meta = { zone = "b" } })
            assert_reply(r, 401, "error", "unauthorized")
            r = register(gwp, b.r1, { meta = { zone = "b" } }, "wrong")
            assert_reply(r, 401, "error", "unauthorized")
        end)

        it("keeps traffic in the gateway's zone", function()
            -- zone b first: once a zone-a backend shows up, traffic must stay in zone a
            assert_reply(register(gwp, b.r3, { meta = { zone = "b" } }, "t"), 201, "status", "registered")
            assert_reply(register(gwp, b.r4, { meta = { zone = "b" }, weight = 2 }, "t"), 201, "status",
                "registered")
            assert.is_truthy(first_reaches({ r3 = true, r4 = true }), "zone b never served")
            assert_reply(register(gwp, b.r1, { meta = { zone = "a" } }, "t"), 201, "status", "registered")
            assert_reply(register(gwp, b.r2, { meta = { zone = "a", rack = "x" } }, "t"), 201, "status",
                "registered")
            assert.is_truthy(first_reaches({ r1 = true, r2 = true }), "zone a never served")
            -- from the first zone-a answer on, the local set is never empty again
            local s = seen(24)
            assert.is_nil(s.r3, "zone b got traffic")
            assert.is_nil(s.r4, "zone b got traffic")
            assert.are.equal(2, status_backends(gwp, "api")[b.r4.url].weight)
        end)

        it("fails over to zone b when the zone-a backends unregister", function()
            assert_reply(unregister(gwp, b.r1, "t"), 200, "status", "unregistered")
            assert_reply(unregister(gwp, b.r2, "t"), 200, "status", "unregistered")
            -- while r2 is still a member the zone still serves: the first zone-b answer means
            -- both leaves reached the worker
            assert.is_truthy(first_reaches({ r3 = true, r4 = true }), "zone b never served")
            local s = seen(24)
            assert.is_nil(s.r1, "r1 got traffic after unregistering")
            assert.is_nil(s.r2, "r2 got traffic after unregistering")
        end)

        it("moves a backend into the zone when a heartbeat changes its meta", function()
            local r = register(gwp, b.r4, { meta = { zone = "a" } }, "t")
            assert_reply(r, 200, "status", "renewed")
            assert.is_truthy(first_reaches({ r4 = true }), "r4 never served")
            local s = eventually(function()
                local x = seen(12)
                return x.r3 == nil and x
            end)
            assert.is_truthy(s, "traffic still reaches zone b after r4 moved to zone a")
            assert.are.same({ r4 = true }, s)
        end)

        it("logged no Lua errors", function()
            no_lua_errors(gwp)
        end)
    end)

    ------------------------------------------------------------------------------------------
    describe("membership hooks", function()
        local gwp

        setup(function()
            gwp = start("", ([[
    admin = { listen = "127.0.0.1:%ADMIN%", token = "t" },
    registration = { allow = { "127.0.0.0/8" }, ttl_ms = 30000, max_backends = 8, upstream = "api" },
    upstreams = { api = { strategy = "round_robin",
                          backends = { { url = "%R4%", meta = { role = "batch" } } } } },
    routes = { { match = { path_prefix = "/" }, upstream = "api" } },
    hooks = {
        -- Only API servers may join.
        on_register = function(backend, upstream)
            local keys = {}
            for k, v in pairs(backend) do keys[#keys + 1] = k .. ":" .. type(v) end
            table.sort(keys)
            gw.log.info("membership: keys " .. table.concat(keys, ","))
            local role = backend.meta and backend.meta.role
            if role ~= "api" then
                gw.log.warn("membership: rejecting " .. backend.url .. " (role " .. tostring(role) .. ")")
                return false
            end
            gw.log.info("membership: admitting " .. backend.url .. " to " .. upstream ..
                        " (id " .. backend.id .. ", weight " .. backend.weight .. ")")
        end,
        -- Count the leaves (a global of the hooks' own Lua state) and report them.
        on_unregister = function(backend, upstream, reason)
            leaves = (leaves or 0) + 1
            gw.log.info(string.format("membership: leave #%d %s from %s (%s)", leaves,
                                      backend.url, upstream, reason))
        end,
    },]]):gsub("%%R4%%", function() return b.r4.url end), nil)
        end)

        teardown(function()
            if gwp then E.kill(gwp.pid) end
        end)

        local function leave_lines()
            return log_lines(gwp, "membership: leave #")
        end

        it("keeps a static backend whose role is not api out at load", function()
            local st = status_backends(gwp, "api")[b.r4.url]
            assert.is_table(st)
            assert.is_false(st.member)
            assert.are.equal(1, #log_lines(gwp, "membership: rejecting " .. b.r4.url:gsub("%p", "%%%0")))
            local r = get(gwp, "/h")
            assert.are.equal(503, r.status)
        end)

        it("passes hooks the backend table gw.test.member builds", function()
            local keys = {}
            for k, v in pairs(gwt.member("http://x:1")) do keys[#keys + 1] = k .. ":" .. type(v) end
            table.sort(keys)
            local lines = log_lines(gwp, "membership: keys ")
            assert.is_true(#lines >= 1)
            assert.matches("membership: keys " .. table.concat(keys, ","):gsub("%p", "%%%0") .. "$", lines[1])
        end)

        it("admits a backend with meta.role == \"api\"", function()
            local r = register(gwp, b.r1, { meta = { role = "api" }, weight = 3 }, "t")
            assert_reply(r, 201, "status", "registered")
            assert.is_truthy(eventually(function()
                local res, who = get(gwp, "/h")
                return res.status == 200 and who == "r1"
            end), "r1 never served")
            local admitted = log_lines(gwp, "membership: admitting " .. b.r1.url:gsub("%p", "%%%0"))
            assert.are.equal(1, #admitted)
            assert.matches("to api %(id " .. r.json.id .. ", weight 3%)", admitted[1])
        end)

        it("rejects any other role with 403 rejected; the backend gets no traffic", function()
            assert_reply(register(gwp, b.r2, { meta = { role = "worker" } }, "t"), 403, "error", "rejected")
            assert_reply(register(gwp, b.r3, {}, "t"), 403, "error", "rejected") -- no meta at all
            assert.are.equal(2, #log_lines(gwp, "membership: rejecting"
                .. " http://127%.0%.0%.1:%d+ %(role [wn]"))
            local st = status_backends(gwp, "api")
            assert.is_falsy(st[b.r2.url] and st[b.r2.url].member)
            assert.is_falsy(st[b.r3.url] and st[b.r3.url].member)
            socket.sleep(0.2) -- what a (wrongly) admitted backend would need to reach the worker
            for _ = 1, 10 do
                local res, who = get(gwp, "/h")
                assert.are.equal(200, res.status)
                assert.are.equal("r1", who)
            end
            -- nothing left, so on_unregister was never called
            assert.are.equal(0, #leave_lines())
            -- and the rejected one cannot be unregistered either
            assert_reply(unregister(gwp, b.r2, "t"), 404, "error", "not_registered")
        end)

        it("needs the admin token to unregister", function()
            assert_reply(unregister(gwp, b.r1), 401, "error", "unauthorized")
            assert.is_true(status_backends(gwp, "api")[b.r1.url].member)
        end)

        it("puts a heartbeat that changes meta through on_register again", function()
            -- a plain heartbeat (no meta): renewed, no hook call
            assert_reply(register(gwp, b.r1, {}, "t"), 200, "status", "renewed")
            assert.are.equal(1, #log_lines(gwp, "membership: admitting " .. b.r1.url:gsub("%p", "%%%0")))
            -- changing the role to one the hook refuses: 403, and nothing changes
            assert_reply(register(gwp, b.r1, { meta = { role = "batch" } }, "t"), 403, "error", "rejected")
            assert.are.equal(1, #log_lines(gwp, "membership: rejecting " .. b.r1.url:gsub("%p", "%%%0")))
            assert.is_true(status_backends(gwp, "api")[b.r1.url].member)
            local res, who = get(gwp, "/h")
            assert.are.equal(200, res.status)
            assert.are.equal("r1", who)
            -- a change the hook accepts: renewed, and the hook saw the new weight
            assert_reply(register(gwp, b.r1, { meta = { role = "api" }, weight = 5 }, "t"), 200,
                "status", "renewed")
            local admitted = log_lines(gwp, "membership: admitting " .. b.r1.url:gsub("%p", "%%%0"))
            assert.are.equal(2, #admitted)
            assert.matches("weight 5%)", admitted[2])
        end)

        it("counts every leave in on_unregister: unregister and TTL expiry", function()
            assert_reply(unregister(gwp, b.r1, "t"), 200, "status", "unregistered")
            local lines = eventually(function()
                local l = leave_lines()
                return #l >= 1 and l
            end)
            assert.is_table(lines, "no on_unregister line in the log")
            assert.are.equal(1, #lines)
            assert.matches("leave #1 " .. b.r1.url:gsub("%p", "%%%0") .. " from api %(unregister%)", lines[1])
            assert.matches("%[info%]", lines[1])

            -- a short TTL, never renewed: it expires and the hook says so
            local r = register(gwp, b.r3, { meta = { role = "api" }, ttl_ms = 300 }, "t")
            assert_reply(r, 201, "status", "registered")
            assert.are.equal(300, r.json.ttl_ms)
            lines = eventually(function()
                local l = leave_lines()
                return #l >= 2 and l
            end)
            assert.is_table(lines, "the registration never expired:\n" .. (E.read_file(gwp.log) or ""))
            assert.are.equal(2, #lines)
            assert.matches("leave #2 " .. b.r3.url:gsub("%p", "%%%0") .. " from api %(expired%)", lines[2])
            assert.is_nil(status_backends(gwp, "api")[b.r3.url])
            assert.is_truthy(eventually(function()
                return get(gwp, "/h").status == 503
            end), "traffic still served with no member left")

            -- the global survives between calls: the next leave is #3
            assert_reply(register(gwp, b.r1, { meta = { role = "api" } }, "t"), 201, "status", "registered")
            assert_reply(unregister(gwp, b.r1, "t"), 200, "status", "unregistered")
            lines = leave_lines()
            assert.are.equal(3, #lines)
            assert.matches("leave #3 ", lines[3])
        end)

        it("logged no Lua errors", function()
            no_lua_errors(gwp)
        end)
    end)
end)
