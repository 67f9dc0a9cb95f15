"""mkdocs hooks: pages generated at build time, so they cannot drift from the code.

- `reference/cli.md`: every `sparsesteer` command's own `--help`, rendered from
  `sparsesteer.cli.build_parser()` (subcommands of `steer` and `reproduce` included).
- `reference/api/<package>.md`: one page per subpackage, one mkdocstrings block per module.

Wired in `mkdocs.yml` (`hooks: [mkdocs_hooks.py]`); nothing here is imported by the library.
"""

from __future__ import annotations

import argparse
import logging
import os
import pkgutil
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGE = "sparsesteer"
# Subpackages in pipeline order (the order of `sparsesteer --help`), then the helpers.
HELP_WIDTH = 88  # columns of the rendered --help texts
API_PACKAGES = ("data", "models", "activations", "sae", "steering", "interpret", "experiments", "utils")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help_sections(parser: argparse.ArgumentParser, path: list[str], level: int) -> list[str]:
    title = " ".join(path)
    out = [f"{'#' * level} `{title}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in _subcommands(parser).items():
        out += _help_sections(sub, [*path, name], min(level + 1, 4))
    return out


def cli_reference() -> str:
    """Markdown of every command's --help, in the order `sparsesteer --help` lists them."""
    from sparsesteer.cli import build_parser

    lines = [
        "# CLI reference",
        "",
        "Generated at build time from the commands' own `--help` (`sparsesteer.cli.build_parser()`,",
        "see `mkdocs_hooks.py`), so it always matches the installed code.",
        "",
    ]
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH)  # argparse wraps to the terminal width: fix it for a stable page
    try:
        return "\n".join(lines + _help_sections(build_parser(), ["sparsesteer"], 2))
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def _modules(package: str) -> list[str]:
    base = ROOT / PACKAGE / package
    subs = sorted(info.name for info in pkgutil.walk_packages([str(base)], prefix=f"{PACKAGE}.{package}."))
    return [f"{PACKAGE}.{package}", *subs]


def api_page(package: str) -> str:
    lines = [f"# `{PACKAGE}.{package}`", "", f"Modules of `{PACKAGE}.{package}`, generated from their docstrings.", ""]
    for module in _modules(package):
        lines += [f"## `{module}`", "", f"::: {module}", "    options:", "      show_root_heading: false", ""]
    return "\n".join(lines)


class _CodeBracketsInDocstrings(logging.Filter):
    """Docstrings write indexing and option syntax in brackets (`accuracy[i][j]`, `hf:REPO[@REVISION]`),
    which Markdown reads as reference links; autorefs then cannot resolve them and leaves the text as
    written. Those unresolved "links" from Python sources are not broken links and are dropped here;
    an unresolved reference in a hand-written page still fails `mkdocs build --strict`."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("Could not find cross-reference target" in msg and re.search(r"from \S+\.py:\d+:", msg))


def on_config(config):
    # autorefs logs from its own module logger (mkdocs_autorefs._internal.plugin in 1.4): filter them all
    names = {"mkdocs.plugins.mkdocs_autorefs._internal.plugin"}
    names |= {n for n in logging.root.manager.loggerDict if n.startswith("mkdocs.plugins.mkdocs_autorefs")}
    for name in names:
        logging.getLogger(name).addFilter(_CodeBracketsInDocstrings())
    return config


def on_files(files, config):
    pages = {"reference/cli.md": cli_reference()}
    pages.update({f"reference/api/{p}.md": api_page(p) for p in API_PACKAGES})
    from mkdocs.structure.files import File

    for path, content in pages.items():
        files.append(File.generated(config, path, content=content))
    return files
