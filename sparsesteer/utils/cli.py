"""What every command shares: the help formatter and the option groups that several commands take.

Only `*/commands.py` modules import this; the stage libraries never parse flags.
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep descriptions' line breaks; show each option's default once (options built from config
    dataclasses already state theirs; None/False defaults say nothing useful)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default:" in text or "%(default)" in text:
            return text
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"
