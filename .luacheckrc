-- luacheck configuration: OpenResty's habits (the ngx_lua globals, 80
-- columns). `luacheck .` from the repository root; ci/test.sh runs it.
std = "ngx_lua"
max_line_length = 80
-- the nginx configs' Lua blocks are not files; tests' Lua helpers are
include_files = { "lua/**/*.lua", "benches/lua/**/*.lua", "tests/lua/**/*.lua",
                  "examples/**/*.lua" }
exclude_files = { "target" }
