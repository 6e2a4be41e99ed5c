"""Sphinx configuration of imgcrypt's API reference (``make apidoc``).

The pages are made from the docstrings by autodoc; which modules are documented is said in
``package.rst`` (``imgcrypt`` itself) and in the layer pages ``reference.rst`` lists (one line
a module), nowhere else.
Built with ``-W -n``: a broken cross-reference to an imgcrypt name is an error, as is any
docstring Sphinx cannot read.
"""

from __future__ import annotations

import imgcrypt

project = "imgcrypt"
author = "imgcrypt contributors"
copyright = "imgcrypt contributors"
release = imgcrypt.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "reno.sphinxext",
]

# Every module line in a layer page becomes a page of its own, generated at build time.
autosummary_generate = True
autosummary_imported_members = False
# A module with __all__ is documented as __all__ says, in the tables as on the page.
autosummary_ignore_module_all = False
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True

nitpicky = True
# References into other projects' documentation (the standard library, cryptography, oslo,
# numpy, typing) cannot be resolved offline; references to imgcrypt's own names must be.
nitpick_ignore_regex = [
    (r"py:.*", r"(?!imgcrypt\b).*"),
    # Private names (type variables, helpers) appear in signatures but are not documented.
    (r"py:.*", r"imgcrypt\..*\._[A-Za-z].*"),
]

# The package's public names are documented twice, in `imgcrypt` and at home (the same object),
# so a short type name in a signature has two targets; a name with none still fails the build.
suppress_warnings = ["ref.python"]

html_theme = "alabaster"

exclude_patterns = ["_build"]


def _resolve_lazy_exports() -> None:
    # imgcrypt imports its public names on first use (see imgcrypt.__getattr__), so dir()
    # and therefore autodoc would not see them; resolve them all once.
    for name in imgcrypt.__all__:
        getattr(imgcrypt, name)


_resolve_lazy_exports()

