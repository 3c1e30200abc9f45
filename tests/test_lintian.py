"""The Debian package is lintian-clean: no error and no warning (a
changelog, a real maintainer address, stripped libraries, a Java-policy jar
name, a copyright file with its notice and license text)."""

import os
import shutil
import subprocess

import harness


def test_lintian_finds_no_error_and_no_warning_in_the_package():
    lintian = shutil.which("lintian")
    assert lintian, "lintian is missing: bash ci/setup.sh installs it"
    env = dict(os.environ, RESTY_FFI_SKIP_BUILD="1")
    p = subprocess.run(["bash", os.path.join(harness.ROOT, "ci", "package.sh")],
                       capture_output=True, text=True, env=env, check=True)
    deb = p.stdout.strip().splitlines()[-1]
    r = subprocess.run([lintian, "--tag-display-limit", "0", deb],
                       capture_output=True, text=True)
    tags = [l for l in (r.stdout + r.stderr).splitlines()
            if l[:2] in ("E:", "W:")]
    assert tags == [], "\n".join(tags)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
