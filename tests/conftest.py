"""pytest fixtures: one build and one staged folder per test session."""

import os

import pytest

import harness


@pytest.fixture(scope="session")
def debian_root():
    """The Debian root RESTY_FFI_DEBIAN names, with the package installed
    (None: nginx and the libraries are the host's)."""
    root = harness.suite_root()
    yield root
    if root:
        root.close()


@pytest.fixture(scope="session")
def stage(debian_root):
    release = harness.build_all()
    s = harness.Stage(debian_root)
    # every library the workspace builds (core, loaders, runtimes)
    for name in sorted(os.listdir(release)):
        if name.startswith("lib") and name.endswith(".so"):
            s.add_lib(os.path.join(release, name))
    for name in ("echo", "stream"):
        s.add_lib(os.path.join(harness.ROOT, "examples", "go", "libffi_go_%s.so" % name))
    yield s
    s.remove()


@pytest.fixture
def nginx(stage):
    """Factory: nginx(server=..., http=..., workers=...) -> started Nginx."""
    started = []

    def start(server, **kw):
        n = harness.Nginx(stage, server, **kw)
        started.append(n)
        n.start()
        return n

    yield start
    for n in started:
        n.stop()
