local gwt = require("gw.test")
local rewrite = require("hooks.rewrite")

describe("hooks.rewrite", function()
    before_each(function() gwt.install_gw() end)
    after_each(function() gwt.uninstall_gw() end)

    describe("new", function()
        local fn
        before_each(function()
            fn = rewrite.new{
                { "^/old/(.*)$", "/new/%1" },
                { "^/v1/", "/api/v1/" },
                { "^/(%w+)/(%d+)$", "/%2/%1" },
                { "^/old/x$", "/never" }, -- shadowed by the first rule
            }
        end)

        it("applies the first matching rule once", function()
            assert.are.equal("/new/a/b", fn("/old/a/b"))
            assert.are.equal("/new/x", fn("/old/x"))
            assert.are.equal("/api/v1/v1/", fn("/v1/v1/"))
            assert.are.equal("/42/users", fn("/users/42"))
        end)

        it("returns nil when nothing matches", function()
            assert.is_nil(fn("/other"))
            assert.is_nil(fn("/older/x"))
        end)

        it("is applied by the runtime as rewrite_path", function()
            local req = gwt.request{ path = "/old/thing?q=1" }
            assert.are.equal("/new/thing", gwt.run_rewrite_path(fn, req))
            assert.are.equal("/old/thing", req:orig_path())
            assert.are.equal("q=1", req:query())
        end)

        it("takes function replacements", function()
            local up = rewrite.new{ { "^/(%a+)$", function(s) return "/" .. s:upper() end } }
            assert.are.equal("/ABC", up("/abc"))
        end)

        it("validates rules at construction", function()
            assert.has_error(function() rewrite.new() end)
            assert.has_error(function() rewrite.new{} end)
            assert.has_error(function() rewrite.new{ "^/a" } end)
            assert.has_error(function() rewrite.new{ { "^/a" } } end)
            assert.has_error(function() rewrite.new{ { "^/a(", "/b" } } end)
            assert.has_error(function() rewrite.new{ { "[a", "/b" } } end)
            assert.has_error(function() rewrite.new{ { "^/a", "/b%" } } end)
            assert.has_error(function() rewrite.new{ { "^/a", "/b%x" } } end)
            assert.has_error(function() rewrite.new{ { "^/a)", "/b" } } end)
            assert.has_error(function() rewrite.new{ { "^/a%", "/b" } } end)
            assert.has_error(function() rewrite.new{ { "^/a%b(", "/b" } } end)
            assert.has_error(function() rewrite.new{ { "^/a%fx", "/b" } } end)
            assert.has_error(function() rewrite.new{ { "^/a$", "/b%2" } } end)
            assert.has_error(function() rewrite.new{ { "^/(a)(b)$", "/%3" } } end)
            assert.has_no_error(function() rewrite.new{ { "^/a", "/100%%" } } end)
            assert.has_no_error(function() rewrite.new{ { "^/a$", "/b%1%0" } } end)
            assert.has_no_error(function() rewrite.new{ { "^/(a)(b)$", "/%2%1" } } end)
            assert.has_no_error(function() rewrite.new{ { "^/[]]%f[%w]%b()[%]]", "/x" } } end)
        end)
    end)

    describe("redirect", function()
        local hook
        before_each(function()
            hook = rewrite.redirect{
                { "^/old/(.*)$", "/new/%1" },
                { "^/temp$", "/elsewhere", status = 307 },
                { "^/docs$", "https://docs.example/?from=gw" },
                { "^/noq$", "/target", keep_query = false },
            }
        end)

        it("answers with 301 and Location, keeping the query", function()
            local r = gwt.run_on_request(hook, gwt.request{ path = "/old/a?x=1" })
            assert.are.equal(301, r.status)
            assert.are.equal("/new/a?x=1", r.headers.Location)
            assert.are.equal("", r.body)
        end)

        it("uses the rule's status", function()
            local r = gwt.run_on_request(hook, gwt.request{ path = "/temp" })
            assert.are.equal(307, r.status)
            assert.are.equal("/elsewhere", r.headers.Location)
        end)

        it("does not add a second query string, or any when told not to", function()
            local r = gwt.run_on_request(hook, gwt.request{ path = "/docs?a=1" })
            assert.are.equal("https://docs.example/?from=gw", r.headers.Location)
            r = gwt.run_on_request(hook, gwt.request{ path = "/noq?a=1" })
            assert.are.equal("/target", r.headers.Location)
        end)

        it("matches the client's path, not the rewritten one", function()
            local req = gwt.request{ path = "/old/a" }
            req:set_path("/a")
            assert.are.equal("/new/a", gwt.run_on_request(hook, req).headers.Location)
        end)

        it("lets other requests through", function()
            assert.is_nil(gwt.run_on_request(hook, gwt.request{ path = "/new/a" }))
        end)

        it("validates the status", function()
            assert.has_error(function() rewrite.redirect{ { "^/a$", "/b", status = 200 } } end)
        end)
    end)
end)
