"""The README's examples print what they say.

The Rust and Go quickstart snippets are taken from README.md as written and
served by a real nginx; each `-->` comment in them is the response body
the snippet must give. (The Python and Java quickstarts are the handlers of
tests/test_package.py, run from the installed package.)
"""

import os
import re

import harness


def readme():
    with open(os.path.join(harness.ROOT, "README.md")) as f:
        return f.read()


def section(text, title):
    start = text.index("\n### " + title + "\n")
    end = text.index("\n### ", start + 1)
    return text[start:end]


def locations(block):
    """(http-level text, [(path, location text, expected body)]) of a snippet."""
    first = block.find("location ")
    http = re.sub(r"#.*", "", block[:first]) if first > 0 else ""
    out = []
    for m in re.finditer(r"^location (\S+) \{\n.*?^\}\n", block, re.M | re.S):
        text = m.group(0)
        said = re.findall(r"-->\s*(.*)$", text, re.M)
        out.append((m.group(1), text, "".join(s + "\n" for s in said)))
    return http, out


def test_the_rust_and_go_quickstart_snippets_print_what_they_say(nginx):
    text = section(readme(), "Rust and Go")
    blocks = re.findall(r"```nginx\n(.*?)```", text, re.S)
    assert len(blocks) == 2, blocks
    http = ""
    cases = []
    for b in blocks:
        h, locs = locations(b)
        http += h
        cases += locs
    assert [c[0] for c in cases] == ["/hello", "/go"]
    assert "require \"resty_ffi\"" in http
    n = nginx("".join(c[1] for c in cases), http=http)
    for path, _, want in cases:
        assert want, path
        assert n.get(path) == (200, want.encode()), path


def test_no_example_prints_a_nil_it_does_not_mean():
    # `ngx.say(select(2, rt:echo("hello")))` printed "hellonil"
    assert "select(2," not in readme()
