"""Jinja2 template rendering for nginx: a runtime using a PyPI library.

Jinja2 lives in a venv (examples/python/requirements.txt), named in the cfg:

    ngx.load_ffi("ffi_python3",
        "venv=/var/cache/resty-ffi/venv:/path/to/examples/python/ffi.render,init,"
        .. "/path/to/examples/python/templates")

A request is JSON, `{"template": "hello.html", "vars": {...}}`; the answer
is the rendered text. HTML templates are autoescaped. Rendering is CPU work,
so this uses the sync handler style on a small thread pool.
"""

import json

import jinja2

import resty_ffi


def init(cfg, tq):
    folder = resty_ffi.cfg_string(cfg)
    if not folder:
        raise ValueError("cfg must name the templates folder: ...ffi.render,init,/path/to/templates")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=jinja2.select_autoescape(["html", "xml"]),
        undefined=jinja2.StrictUndefined,
    )

    def handle(req):
        call = json.loads(req)
        return env.get_template(call["template"]).render(**call.get("vars", {}))

    handle.threads = 2
    return handle
