"""``python -m edgeemo``: the command line."""

from .cli import cli

cli(prog_name="edgeemo")
