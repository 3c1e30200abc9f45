-- Test helper: turns a call's `ok, res_or_rc, err` into an HTTP answer.
-- ok -> 200 with the response bytes; not ok -> 502 with "rc=<rc> err=<err>".
local _M = {}

function _M.send(ok, res, err)
    if ok then
        ngx.status = 200
        if res ~= nil then
            ngx.print(res)
        else
            ngx.print("<nil>")
        end
    else
        ngx.status = 502
        ngx.print("rc=", tostring(res), " err=", tostring(err))
    end
end

function _M.body()
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if body == nil then
        local file = ngx.req.get_body_file()
        if file then
            local f = io.open(file, "rb")
            body = f:read("*a")
            f:close()
        end
    end
    return body or ""
end

return _M
