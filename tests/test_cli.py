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


def test_list_flags_comma_lists_and_repeats():
    """Numeric grids: a comma list, the last flag wins (as argparse); string lists and REPEATABLE
    fields add up over repeated flags."""
    import argparse
    from dataclasses import dataclass, field

    from sparsesteer.utils import config as config_utils

    @dataclass(frozen=True, kw_only=True)
    class C:
        lams: tuple[float, ...] = (0.0,)
        """grid"""
        hooks: tuple[str, ...] = ()
        """hooks"""
        latent: tuple[int, ...] = field(default=(), metadata=config_utils.REPEATABLE)
        """latents"""

    p = argparse.ArgumentParser()
    config_utils.add_arguments(p, C, flags={"hooks": "--hook"})
    args = p.parse_args(
        ["--lams", "0,1,2", "--lams", "3", "--hook", "a", "--hook", "b,c", "--latent", "3", "--latent", "7,9"]
    )
    cfg = config_utils.from_args(C, args)
    assert cfg.lams == (3.0,) and cfg.hooks == ("a", "b", "c") and cfg.latent == (3, 7, 9)
