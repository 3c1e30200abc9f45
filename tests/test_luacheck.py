"""The Lua code is luacheck-clean (.luacheckrc: OpenResty's ngx_lua
globals, 80 columns), so a stray global or a typo'd local fails the suite,
not only CI (ci/test.sh runs luacheck too)."""

import shutil
import subprocess

import harness


def test_luacheck_finds_nothing_in_the_lua_code():
    luacheck = shutil.which("luacheck")
    assert luacheck, "luacheck is missing: bash ci/setup.sh installs Debian's lua-check"
    p = subprocess.run([luacheck, "--codes", "--no-color", "."], cwd=harness.ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "0 warnings / 0 errors" in p.stdout, p.stdout[-2000:]
