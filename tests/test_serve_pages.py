"""The web app's pages come from one Jinja2 shell: each page template extends it, the app serves
the rendered pages at their routes and under /static/, and every script a page names exists."""

from __future__ import annotations

import re
from importlib import resources

from fastapi.testclient import TestClient  # the dev extra installs the serve dependencies

from convscope.frontends.serve import Engine, create_app
from convscope.frontends.serve.pages import render_pages

ROUTES = {"index.html": "/", "concepts.html": "/concepts", "crp.html": "/crp", "trust.html": "/trust",
          "audit.html": "/audit"}


def test_every_page_extends_the_one_shell():
    root = resources.files("convscope.frontends.serve").joinpath("pages")
    templates = {p.name: p.read_text() for p in root.iterdir() if p.name.endswith(".html.j2")}
    shell = templates.pop("_shell.html.j2")
    assert "<!DOCTYPE html>" in shell and "<header>" in shell
    assert sorted(n.replace(".j2", "") for n in templates) == sorted(ROUTES)
    for name, text in templates.items():  # no page repeats the shell
        assert text.startswith('{% extends "_shell.html.j2" %}'), name
        assert not re.search(r"<!DOCTYPE|<head>|<title>|<header>|</html>", text, re.I), name
    # nothing in the static folder shadows a rendered page
    static = resources.files("convscope.frontends.serve").joinpath("static")
    assert not [p.name for p in static.iterdir() if p.name.endswith(".html")]


def test_rendered_pages_are_whole_and_name_their_own_scripts():
    pages = {n: b.decode() for n, b in render_pages().items()}
    assert sorted(pages) == sorted(ROUTES)
    static = resources.files("convscope.frontends.serve").joinpath("static")
    for name, html in pages.items():
        assert html.startswith("<!DOCTYPE html>\n") and html.endswith("</body>\n</html>\n"), name
        assert "{{" not in html and "{%" not in html and "{#" not in html, name  # all rendered
        assert html.count("<header>") == 1 and html.count("<h1>") == 1 and html.count("<title>") == 1, name
        scripts = re.findall(r'<script src="/static/([^"]+)" defer></script>', html)
        assert scripts and all(static.joinpath(s).is_file() for s in scripts), (name, scripts)
        stem = name.removesuffix(".html")
        assert (f"{stem}.js" in scripts) == (stem != "index"), (name, scripts)  # its own script
        assert ('href="/"' in html) == (stem != "index"), name  # a way back to the explain page


def test_the_app_serves_the_rendered_pages():
    client = TestClient(create_app(Engine(("digits-cnn",))), base_url="http://127.0.0.1")
    pages = render_pages()
    for name, route in ROUTES.items():
        for path in (route, f"/static/{name}"):
            r = client.get(path)
            assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8", path
            assert r.content == pages[name], path
