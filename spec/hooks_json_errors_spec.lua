local gwt = require("gw.test")
local json_errors = require("hooks.json_errors")

describe("hooks.json_errors", function()
    before_each(function() gwt.install_gw() end)
    after_each(function() gwt.uninstall_gw() end)

    local function respond(hook, res_opts, req_opts)
        local req = gwt.request(req_opts or { id = "rid-9" })
        assert.is_nil(gwt.run_on_request(hook.on_request, req))
        res_opts.ctx = req.ctx
        if res_opts.source == nil then
            res_opts.backend = "http://127.0.0.1:9001"
        end
        local res = gwt.response(res_opts)
        gwt.run_on_response(hook.on_response, res)
        return res
    end

    it("replaces a buffered upstream HTML error with JSON", function()
        local hook = json_errors.new()
        local res = respond(hook, { status = 404, body = "<h1>Not Found</h1>",
            headers = { ["Content-Type"] = "text/html" } })
        assert.are.equal("application/json", res:header("Content-Type"))
        assert.are.same({ error = "not_found", status = 404, message = "Not Found",
            request_id = "rid-9" }, gwt.json_body(res))
        assert.are.equal(404, res:status())
    end)

    it("uses configured messages and code names", function()
        local hook = json_errors.new{ messages = { [502] = "the backend is having a bad day" } }
        local res = respond(hook, { status = 502, body = "oops" })
        local doc = gwt.json_body(res)
        assert.are.equal("bad_gateway", doc.error)
        assert.are.equal("the backend is having a bad day", doc.message)
        res = respond(hook, { status = 418, body = "" })
        assert.are.equal("im_a_teapot", gwt.json_body(res).error)
        res = respond(hook, { status = 499, body = "" })
        assert.are.equal("client_error", gwt.json_body(res).error)
        res = respond(hook, { status = 599, body = "" })
        assert.are.equal("server_error", gwt.json_body(res).error)
    end)

    it("leaves JSON, successes and gateway responses alone", function()
        local hook = json_errors.new()
        for _, ct in ipairs({ "application/json", "application/json; charset=utf-8",
                              "application/problem+json", "APPLICATION/JSON" }) do
            local res = respond(hook, { status = 400, body = "{}", headers = { ["Content-Type"] = ct } })
            assert.are.equal("{}", res:body())
        end
        local ok = respond(hook, { status = 200, body = "fine" })
        assert.are.equal("fine", ok:body())
        local gw_res = respond(hook, { status = 503, body = "x", source = "gateway" })
        assert.are.equal("x", gw_res:body())
        assert.is_nil(gw_res:header("X-Error-Format"))
    end)

    it("marks unbuffered errors as passed through", function()
        local hook = json_errors.new()
        local res = respond(hook, { status = 500, headers = { ["Content-Type"] = "text/plain" } })
        assert.are.equal("passthrough", res:header("X-Error-Format"))
        assert.are.equal("text/plain", res:header("Content-Type"))
        assert.are.same({}, {}) -- body untouched: there is none to see
    end)

    it("falls back to the X-Request-Id header, or leaves the id out", function()
        local hook = json_errors.new()
        local res = gwt.response{ status = 500, body = "x", backend = "http://b",
            headers = { ["X-Request-Id"] = "from-header" } }
        gwt.run_on_response(hook.on_response, res)
        assert.are.equal("from-header", gwt.json_body(res).request_id)
        local no_id = json_errors.new{ include_request_id = false }
        res = respond(no_id, { status = 500, body = "x" })
        assert.is_nil(gwt.json_body(res).request_id)
    end)

    it("recognises JSON content types", function()
        local is_json = json_errors._is_json
        assert.is_true(is_json("application/json"))
        assert.is_true(is_json("application/vnd.api+json"))
        assert.is_false(is_json("text/html"))
        assert.is_false(is_json("application/jsonp"))
        assert.is_false(is_json(nil))
    end)

    it("validates its options", function()
        assert.has_error(function() json_errors.new("x") end)
        assert.has_error(function() json_errors.new{ messages = { x = "y" } } end)
        assert.has_error(function() json_errors.new{ messages = { [404] = 1 } } end)
    end)
end)
