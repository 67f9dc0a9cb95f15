"""The generated reference pages of the docs site (mkdocs_hooks.py): the CLI page holds every
command's own --help, subcommands included; every subpackage has an API page. CI also runs
`mkdocs build --strict` (.ci/run); this test needs no mkdocs."""

import argparse
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def command_paths(parser, path=("sparsesteer",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_paths(sub, (*path, name))


def test_cli_reference_has_every_commands_help(monkeypatch):
    import os

    from sparsesteer.cli import build_parser

    h = hooks()
    monkeypatch.delenv("COLUMNS", raising=False)
    page = h.cli_reference()
    assert "COLUMNS" not in os.environ  # the hook leaves the environment as it found it
    monkeypatch.setenv("COLUMNS", str(h.HELP_WIDTH))
    paths = list(command_paths(build_parser()))
    assert len(paths) > 15  # the top level, its commands, steer's and reproduce's subcommands
    for path, parser in paths:
        assert f"`{' '.join(path)}`\n\n```text\n{parser.format_help().rstrip()}\n```" in page, " ".join(path)


def test_every_subpackage_has_an_api_page():
    h = hooks()
    packages = {p.name for p in (ROOT / "sparsesteer").iterdir() if (p / "__init__.py").exists()}
    assert packages == set(h.API_PACKAGES)
    page = h.api_page("sae")
    assert "::: sparsesteer.sae.checkpoint" in page and "::: sparsesteer.sae\n" in page
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(f"reference/api/{p}.md" in nav for p in h.API_PACKAGES)
