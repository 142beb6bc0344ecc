"""The ``mailserver`` administration command.

Each group of subcommands lives in its own module and registers itself here through a
``register(subparsers)`` function; every subcommand sets ``run(args) -> int`` as its handler.
Errors the user can fix are raised as :class:`CommandError` and printed as one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class CommandError(Exception):
    """A failure to report to the user in one line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    from mailserver import (
        cli_accounts,
        cli_config,
        cli_dkim,
        cli_dns,
        cli_queue,
        cli_quickstart,
        cli_tls,
    )

    parser = argparse.ArgumentParser(prog="mailserver", description="Administer the mail server.")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default: the embedded default configuration)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_quickstart.register(subparsers)
    cli_config.register(subparsers)
    cli_accounts.register(subparsers)
    cli_tls.register(subparsers)
    cli_queue.register(subparsers)
    cli_dkim.register(subparsers)
    cli_dns.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except CommandError as error:
        print(f"mailserver: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
