import subprocess
import sys

from sparsesteer.cli import build_parser, main


def test_help_lists_every_registered_command():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        text = p.format_help()
        assert name in text


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: sparsesteer" in capsys.readouterr().out


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "sparsesteer", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("sparsesteer ")
