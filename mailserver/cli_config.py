"""``mailserver check-config``, and loading the configuration for the other subcommands."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mailserver.cli import CommandError
from mailserver.config import Config, ConfigError, load_config


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``check-config`` subcommand."""
    parser = subparsers.add_parser(
        "check-config",
        help="check a configuration file and report every problem in it",
        description=(
            "Load a configuration file the way the server would and report every problem "
            "found, one per line, without starting anything."
        ),
    )
    parser.add_argument(
        "file",
        nargs="?",
        metavar="FILE",
        help="the file to check (default: the --config file, else the embedded default)",
    )
    parser.set_defaults(run=run_check_config)


def run_check_config(args: argparse.Namespace) -> int:
    """Print ``FILE: configuration OK`` and return 0, or print each problem to stderr and return 1.

    Problems go out as bare ``FILE: KEY: reason`` lines (not through CommandError) so that
    editors and scripts can read them.
    """
    path = args.file if args.file is not None else getattr(args, "config", None)
    try:
        config = load_config(path)
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 1
    print(f"{config.source}: configuration OK")
    return 0


def load_config_for(args: argparse.Namespace) -> Config:
    """Load the global ``--config`` file (or the embedded default) for a subcommand."""
    try:
        return load_config(getattr(args, "config", None))
    except ConfigError as error:
        raise CommandError(str(error)) from error
