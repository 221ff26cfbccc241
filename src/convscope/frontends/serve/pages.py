"""The web app's pages, rendered from one Jinja2 shell (``pages/_shell.html.j2``).

Every page (``index``, ``concepts``, ``crp``, ``trust``, ``audit``) shares the same ``<head>`` and
``<header>``; each ``pages/<name>.html.j2`` extends the shell with its title, scripts, intro line,
links and body. The pages hold no per-request data, so they are rendered once, when the app is
built, and served as bytes like the static files.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["render_pages"]

_SUFFIX = ".html.j2"


def render_pages() -> dict[str, bytes]:
    """``{"<name>.html": page bytes}`` for every page template (the shell, ``_shell``, excluded)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("convscope.frontends.serve", "pages"), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                      undefined=StrictUndefined)
    root = resources.files("convscope.frontends.serve").joinpath("pages")
    names = sorted(p.name for p in root.iterdir() if p.name.endswith(_SUFFIX) and not p.name.startswith("_"))
    return {n[: -len(_SUFFIX)] + ".html": env.get_template(n).render().encode() for n in names}
