--- spec/support/e2e.lua: helpers for end-to-end specs that run the real prequal-gw.
--
-- * Binaries: PGW_BIN (default build/prequal-gw) and PGW_BACKEND (default build/pgw-backend),
--   relative paths taken from the repository root. `E.missing()` says why they can't be used.
-- * Processes are started in the background through the shell (`exec prog ... &`), their pids
--   kept in a list; `E.stop_all()` (call it from `teardown` and from a `finally`) kills every one
--   this module started, by pid, and nothing else.
-- * `E.request(port, opts)` is a raw HTTP/1.1 client (Connection: close) that returns
--   `{ status, headers = { lower-case name -> value joined with ", " }, list = { {name, value} },
--   body }`.
local socket = require("socket")

local E = {}

-- Repository root: this file is <root>/spec/support/e2e.lua.
local function repo_root()
    local src = debug.getinfo(1, "S").source:gsub("^@", "")
    local dir = src:match("^(.*)/spec/support/e2e%.lua$") or "."
    if dir:sub(1, 1) ~= "/" then
        local pwd = os.getenv("PWD") or io.popen("pwd"):read("*l")
        dir = dir == "." and pwd or (pwd .. "/" .. dir)
    end
    return dir
end

E.root = repo_root()

local function abs(p)
    if p:sub(1, 1) == "/" then return p end
    return E.root .. "/" .. p
end

E.bin = abs(os.getenv("PGW_BIN") or "build/prequal-gw")
E.backend_bin = abs(os.getenv("PGW_BACKEND") or "build/pgw-backend")

local function executable(path)
    local r = os.execute("test -x '" .. path .. "'")
    return r == 0 or r == true
end

--- nil when both binaries are there, else a message for pending().
function E.missing()
    local why = {}
    if not executable(E.bin) then
        why[#why + 1] = "prequal-gw not found at " .. E.bin
    end
    if not executable(E.backend_bin) then
        why[#why + 1] = "pgw-backend not found at " .. E.backend_bin
    end
    if #why == 0 then return nil end
    return table.concat(why, "; ") ..
        " (build it, or set PGW_BIN / PGW_BACKEND): end-to-end specs skipped"
end

local function sh_quote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
E.quote = sh_quote

local function read_file(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return s
end
E.read_file = read_file

local function write_file(path, s)
    local f = assert(io.open(path, "wb"))
    f:write(s)
    f:close()
end
E.write_file = write_file

--- A new temporary directory.
function E.tmpdir()
    local p = io.popen("mktemp -d /tmp/pgw-e2e.XXXXXX")
    local d = p:read("*l")
    p:close()
    assert(d and d ~= "", "mktemp -d failed")
    E.dirs[#E.dirs + 1] = d
    return d
end
E.dirs = {}

E.max_lifetime = tonumber(os.getenv("PGW_E2E_MAX_LIFETIME") or "") or 300
do
    local r = os.execute("command -v timeout >/dev/null 2>&1")
    E.has_timeout = r == 0 or r == true
end

-- Processes started here: { pid = n, name = s, log = path }.
E.procs = {}

--- Starts `argv` (a list; quoted here) in the background with stdout+stderr to `log`.
-- `env` (name -> value) is prefixed. Returns the pid.
function E.spawn(argv, log, env, name)
    local parts = {}
    for k, v in pairs(env or {}) do
        parts[#parts + 1] = k .. "=" .. sh_quote(v)
    end
    local cmd = {}
    for i, a in ipairs(argv) do cmd[i] = sh_quote(a) end
    if E.has_timeout then
        -- A safety net if busted itself is killed before teardown: coreutils timeout ends the
        -- process after E.max_lifetime seconds (and passes our TERM on to it).
        table.insert(cmd, 1, "timeout -s TERM " .. E.max_lifetime)
    end
    local pidfile = log .. ".pid"
    -- `exec` in the background child makes $! the program's own pid; the shell exits at once,
    -- so the program is re-parented and never becomes our zombie.
    local line = string.format("%s exec %s </dev/null >%s 2>&1 & echo $! >%s",
        table.concat(parts, " "), table.concat(cmd, " "), sh_quote(log), sh_quote(pidfile))
    os.execute(line)
    local pid = tonumber((read_file(pidfile) or ""):match("%d+"))
    assert(pid, "could not start " .. table.concat(argv, " "))
    E.procs[#E.procs + 1] = { pid = pid, name = name or argv[1], log = log }
    return pid
end

--- Whether `pid` is running (a zombie, which init may reap late, counts as gone).
function E.alive(pid)
    local stat = read_file("/proc/" .. pid .. "/stat")
    if stat then
        return stat:match("^%d+ %b() (%a)") ~= "Z"
    end
    local self_stat = io.open("/proc/self/stat", "rb")
    if self_stat then
        self_stat:close()
        return false -- /proc works and has no such process
    end
    local r = os.execute("kill -0 " .. pid .. " 2>/dev/null")
    return r == 0 or r == true
end

--- Kills one process we started (TERM, then KILL after 1 s).
function E.kill(pid)
    if not E.alive(pid) then return end
    os.execute("kill -TERM " .. pid .. " 2>/dev/null")
    local deadline = socket.gettime() + 1
    while E.alive(pid) and socket.gettime() < deadline do
        socket.sleep(0.02)
    end
    if E.alive(pid) then
        os.execute("kill -KILL " .. pid .. " 2>/dev/null")
    end
end

--- Kills every process this module started (safe to call twice), and removes temp dirs.
function E.stop_all()
    for i = #E.procs, 1, -1 do
        E.kill(E.procs[i].pid)
        E.procs[i] = nil
    end
    if os.getenv("PGW_E2E_KEEP") == nil then
        for i = #E.dirs, 1, -1 do
            os.execute("rm -rf " .. sh_quote(E.dirs[i]))
            E.dirs[i] = nil
        end
    end
end

--- An ephemeral loopback port (bound to 0, then released).
function E.free_port()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return tonumber(port)
end

--- Waits until 127.0.0.1:port accepts (default 10 s). Returns true or raises with `log`.
function E.wait_port(port, timeout, pid, log)
    local deadline = socket.gettime() + (timeout or 10)
    while socket.gettime() < deadline do
        local c = socket.connect("127.0.0.1", port)
        if c then
            c:close()
            return true
        end
        if pid and not E.alive(pid) then
            error("process exited before listening on " .. port .. ":\n" .. (read_file(log) or ""))
        end
        socket.sleep(0.02)
    end
    error("nothing listening on 127.0.0.1:" .. port .. " after " .. (timeout or 10) .. " s:\n" ..
        (log and read_file(log) or ""))
end

--- Starts pgw-backend on an ephemeral port. Returns { name, port, url, pid }.
function E.start_backend(dir, name)
    local log = dir .. "/backend-" .. name .. ".log"
    local pid = E.spawn({ E.backend_bin, "--listen", "127.0.0.1:0", "--quiet", "--name", name },
        log, nil, "pgw-backend " .. name)
    local deadline = socket.gettime() + 10
    local port
    while socket.gettime() < deadline do
        port = tonumber((read_file(log) or ""):match("listening on 127%.0%.0%.1:(%d+)"))
        if port then break end
        if not E.alive(pid) then
            error("pgw-backend " .. name .. " exited:\n" .. (read_file(log) or ""))
        end
        socket.sleep(0.01)
    end
    assert(port, "pgw-backend " .. name .. " printed no port:\n" .. (read_file(log) or ""))
    E.wait_port(port, 10, pid, log)
    return { name = name, port = port, url = "http://127.0.0.1:" .. port, pid = pid }
end

--- Writes `config` (Lua source; "%PORT%" and "%ADMIN%" are replaced) as dir/gateway.lua and
-- starts prequal-gw on it. Returns { port, admin, pid, log, config }.
function E.start_gateway(dir, config)
    local port, admin = E.free_port(), E.free_port()
    while admin == port do admin = E.free_port() end
    config = config:gsub("%%PORT%%", tostring(port)):gsub("%%ADMIN%%", tostring(admin))
    local path = dir .. "/gateway.lua"
    write_file(path, config)
    local log = dir .. "/gateway.log"
    -- Validate first: a bad config gives its message at once.
    local check = io.popen("PGW_LUA_DIR=" .. sh_quote(E.root .. "/lua") .. " " .. sh_quote(E.bin) ..
        " -t " .. sh_quote(path) .. " 2>&1; echo rc=$?")
    local out = check:read("*a")
    check:close()
    if not out:match("rc=0%s*$") then
        error("prequal-gw -t rejected the generated config:\n" .. out)
    end
    local pid = E.spawn({ E.bin, path }, log, { PGW_LUA_DIR = E.root .. "/lua" }, "prequal-gw")
    E.wait_port(port, 10, pid, log)
    E.wait_port(admin, 10, pid, log)
    return { port = port, admin = admin, pid = pid, log = log, config = path }
end

---------------------------------------------------------------------------------------------
-- A raw HTTP/1.1 client.

local function decode_chunked(s)
    local out, pos = {}, 1
    while true do
        local size_hex, after = s:match("^([%x]+)[^\r\n]*\r\n()", pos)
        if not size_hex then break end
        local n = tonumber(size_hex, 16)
        if n == 0 then break end
        out[#out + 1] = s:sub(after, after + n - 1)
        pos = after + n + 2
    end
    return table.concat(out)
end

--- Sends one request on a new connection and reads the whole response.
-- opts: method ("GET"), path ("/"), host ("127.0.0.1:<port>"; false sends none),
-- headers (a list of {name, value} pairs, sent in order, or a map), body (string), timeout (5 s).
function E.request(port, opts)
    opts = opts or {}
    local c = assert(socket.connect("127.0.0.1", port))
    c:settimeout(opts.timeout or 5)
    local lines = { string.format("%s %s HTTP/1.1", opts.method or "GET", opts.path or "/") }
    if opts.host ~= false then
        lines[#lines + 1] = "Host: " .. (opts.host or ("127.0.0.1:" .. port))
    end
    local hs = opts.headers or {}
    if #hs > 0 then
        for _, p in ipairs(hs) do lines[#lines + 1] = p[1] .. ": " .. p[2] end
    else
        local names = {}
        for k in pairs(hs) do names[#names + 1] = k end
        table.sort(names)
        for _, k in ipairs(names) do lines[#lines + 1] = k .. ": " .. hs[k] end
    end
    if opts.body then
        lines[#lines + 1] = "Content-Length: " .. #opts.body
    end
    lines[#lines + 1] = "Connection: close"
    assert(c:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (opts.body or "")))
    local data, err, partial = c:receive("*a")
    c:close()
    data = data or partial
    if not data or data == "" then
        error("no response from 127.0.0.1:" .. port .. " (" .. tostring(err) .. ")")
    end
    local head_end = data:find("\r\n\r\n", 1, true)
    assert(head_end, "incomplete response head: " .. data)
    local head, body = data:sub(1, head_end - 1), data:sub(head_end + 4)
    local status = tonumber(head:match("^HTTP/1%.%d (%d%d%d)"))
    local res = { status = status, headers = {}, list = {}, body = body, raw = data }
    for line in head:gmatch("\r\n([^\r\n]*)") do
        local n, v = line:match("^([^:]+):%s*(.-)%s*$")
        if n then
            res.list[#res.list + 1] = { n, v }
            local ln = n:lower()
            res.headers[ln] = res.headers[ln] and (res.headers[ln] .. ", " .. v) or v
        end
    end
    if (res.headers["transfer-encoding"] or ""):lower():find("chunked") then
        res.body = decode_chunked(body)
    end
    return res
end

--- The JSON body of a response, decoded (nil when not JSON).
function E.json(res)
    local ok, v = pcall(require("cjson").decode, res.body)
    if ok then return v end
    return nil
end

return E
