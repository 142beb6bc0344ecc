"""``mailserver dns-records`` and ``mailserver dns-check``: what to publish in DNS, and whether
it is published.

Both work on one domain, or on every domain we know of: those of the user database and those
with ``[[dkim.keys]]``. ``dns-check`` asks the configured resolver (``[dns]``) and exits with 1
when a record is missing or wrong; a look-up that fails or times out is reported as not
checked and does not count as wrong (exit status 3 when nothing else is wrong).

``dns-check DOMAIN --key SELECTOR=FILE`` checks the record of one key that is not configured
yet, and nothing else: a new key is published first and configured once DNS serves it (see
``dkim keygen``), and the check of that one step must not fail for other records.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mailserver.address import AddressError, normalize_domain, parse_domain
from mailserver.cli import CommandError
from mailserver.cli_accounts import open_accounts
from mailserver.cli_config import load_config_for
from mailserver.cli_dkim import parse_domain_argument, parse_selector
from mailserver.cli_quickstart import DEFAULT_CONFIG
from mailserver.config import EMBEDDED_DEFAULT, Config, DKIMKey
from mailserver.dkimkeys import KeyFileError, load_key
from mailserver.dnscheck import Finding, Lookups, Status, check_domain, check_key
from mailserver.dnsquery import DNSQuery, make_resolver
from mailserver.dnsrecords import (
    DomainRecords,
    PublishedKey,
    admin_command,
    plan,
    published_key,
    render,
)
from mailserver.userdb import database_path

__all__ = ["exit_status", "known_domains", "records_for", "register", "report"]

_T = TypeVar("_T")

UNCHECKED_EXIT = 3  # not 2, which argparse uses for a command-line mistake


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``dns-records`` and ``dns-check`` subcommands."""
    help = "print the DNS records to publish for a domain, as a zone-file snippet"
    parser = subparsers.add_parser("dns-records", help=help, description=_sentence(help))
    _domain_argument(parser)
    parser.set_defaults(run=run_dns_records)
    help = "look up a domain's DNS records and say what is missing or wrong"
    parser = subparsers.add_parser(
        "dns-check",
        help=help,
        description=_sentence(help)
        + " Exits with 0 when every record is right, 1 when one is missing or wrong, 3 when "
        "nothing was found wrong but some look-ups failed or timed out.",
    )
    _domain_argument(parser)
    parser.add_argument(
        "--key",
        metavar="SELECTOR=FILE",
        help="check only the DNS record of this key, which is not configured yet (as dkim "
        "keygen wrote it); needs DOMAIN",
    )
    parser.set_defaults(run=run_dns_check)


def _sentence(help: str) -> str:
    return help[0].upper() + help[1:] + "."


def _domain_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "domain",
        metavar="DOMAIN",
        nargs="?",
        help="the domain (default: every domain in the user database or with DKIM keys)",
    )


def _account_domains(config: Config) -> list[str]:
    """The domains of the user database, without creating the database if there is none."""
    if not database_path(config.server.data_dir).exists():
        return []
    with open_accounts(config) as accounts:
        return accounts.list_domains()


def known_domains(config: Config) -> list[str]:
    """Every domain of the user database or of a DKIM key, sorted."""
    return sorted({key.domain for key in config.dkim.keys} | set(_account_domains(config)))


def _did_you_mean(config: Config) -> str:
    """A hint for a user who set up ./mailserver.toml (as quickstart does) and then left out
    --config: the embedded default is not their configuration."""
    if config.source == EMBEDDED_DEFAULT and os.path.isfile(DEFAULT_CONFIG):
        return f"; did you mean --config ./{DEFAULT_CONFIG}?"
    return ""


def _chosen_domains(config: Config, wanted: str | None) -> list[str]:
    known = known_domains(config)
    command = admin_command(config.source)
    if wanted is None:
        if not known:
            raise CommandError(
                f"no domains yet: add one with: {command} domain add DOMAIN (or start with "
                f"mailserver quickstart ADDRESS){_did_you_mean(config)}"
            )
        return known
    try:
        domain = normalize_domain(parse_domain(wanted.strip()))
    except AddressError as error:
        raise CommandError(f"{wanted.strip()!r}: {error}") from None
    if domain not in known:
        raise CommandError(
            f"unknown domain {domain}: it is not in the user database and has no "
            f"[[dkim.keys]] (add it with: {command} domain add {domain})" + _did_you_mean(config)
        )
    return [domain]


def records_for(config: Config, domains: Sequence[str]) -> list[DomainRecords]:
    """The expected records of each domain; refusals become CommandErrors."""
    hostname = config.server.hostname
    if "." not in hostname:
        raise CommandError(
            f'server.hostname is "{hostname}", which other servers cannot look up: set it in '
            "the configuration to the name the MX record is to point at" + _did_you_mean(config)
        )
    try:
        return [plan(config, domain) for domain in domains]
    except KeyFileError as error:
        raise CommandError(f"a DKIM key cannot be read: {error}") from None


def run_dns_records(args: argparse.Namespace) -> int:
    config = load_config_for(args)
    expected = records_for(config, _chosen_domains(config, args.domain))
    print("\n".join(render(records) for records in expected), end="")
    return 0


# --- dns-check ----------------------------------------------------------------------------------

_LABEL_WIDTH = max(len(status.value) for status in Status)


def report(
    domain: str, findings: Sequence[Finding], command: str = "mailserver", fix: str | None = None
) -> list[str]:
    """The lines printed for one domain: one per finding, then a summary. ``command`` is the
    admin command as the hint spells it (:func:`~mailserver.dnsrecords.admin_command`);
    ``fix`` replaces the hint to run dns-records when something is missing or wrong."""
    lines = [f"{domain}:"]
    lines += [f"  {finding.status.value:<{_LABEL_WIDTH}}  {finding.text}" for finding in findings]
    missing = sum(finding.status is Status.MISSING for finding in findings)
    wrong = sum(finding.status is Status.WRONG for finding in findings)
    unchecked = sum(finding.status is Status.UNCHECKED for finding in findings)
    notes = sum(finding.status is Status.NOTE for finding in findings)
    if missing or wrong:
        counts = ", ".join(
            f"{count} {word}" for count, word in ((missing, "missing"), (wrong, "wrong")) if count
        )
        lines.append(
            f"  {counts}: {fix or f'see what to publish with: {command} dns-records {domain}'}"
        )
    elif unchecked:
        lines.append(f"  nothing wrong found, but {unchecked} not checked: try again later")
    elif notes:
        # Not "every record is right" right under a note that says otherwise.
        lines.append(f"  nothing missing or wrong; {notes} note{'s' if notes > 1 else ''}")
    else:
        lines.append("  every record is right")
    return lines


def _lookups(reactor: Any, config: Config) -> Lookups:
    servers = [(server.host, server.port) for server in config.dns.resolver] or None
    return DNSQuery(make_resolver(reactor, servers, config.dns.timeout))


async def _check_all(reactor: Any, config: Config, expected: Sequence[DomainRecords]) -> int:
    lookups = _lookups(reactor, config)
    statuses: set[Status] = set()
    for number, records in enumerate(expected):
        findings = await check_domain(lookups, records)
        if number:
            print()
        print("\n".join(report(records.domain, findings, records.command)), flush=True)
        statuses.update(finding.status for finding in findings)
    return exit_status(statuses)


def _key_to_check(config: Config, domain: str | None, text: str) -> PublishedKey:
    """The key of ``--key SELECTOR=FILE`` for DOMAIN, as it would be published."""
    if domain is None:
        raise CommandError(
            "--key: give the DOMAIN the key is for, as in: dns-check DOMAIN --key SELECTOR=FILE"
        )
    selector, equals, file = text.partition("=")
    if not equals or not file:
        raise CommandError(f"--key: expected SELECTOR=FILE, got {text!r}")
    path = Path(os.path.abspath(file))
    try:
        signing = load_key(path)
    except KeyFileError as error:
        raise CommandError(f"--key: {error}") from None
    key = DKIMKey(parse_domain_argument(domain), parse_selector(selector, "--key"), path)
    return published_key(config, key, signing)


async def _check_one_key(reactor: Any, config: Config, published: PublishedKey) -> int:
    findings = await check_key(_lookups(reactor, config), published)
    fix = "publish the record that dkim keygen printed for it, then check again"
    print("\n".join(report(published.key.domain, findings, fix=fix)), flush=True)
    return exit_status({finding.status for finding in findings})


def exit_status(statuses: set[Status]) -> int:
    """1 when a record is missing or wrong; else 3 when one could not be checked (we cannot
    say all is right, nor that anything is wrong); else 0."""
    if any(status.failing for status in statuses):
        return 1
    return UNCHECKED_EXIT if Status.UNCHECKED in statuses else 0


def run_dns_check(args: argparse.Namespace) -> int:
    config = load_config_for(args)
    if args.key is not None:
        published = _key_to_check(config, args.domain, args.key)
        return _run_reactor(lambda reactor: _check_one_key(reactor, config, published))
    expected = records_for(config, _chosen_domains(config, args.domain))
    return _run_reactor(lambda reactor: _check_all(reactor, config, expected))


def _run_reactor(work: Callable[[Any], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``work(reactor)`` on the global reactor until it is done; its result or exception.

    (``task.react`` would end the process itself; the caller here decides the exit status.)
    """
    from twisted.internet import reactor

    outcome: list[_T | Failure] = []

    def start() -> None:
        done = Deferred.fromCoroutine(work(reactor))
        done.addBoth(outcome.append)
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    if not outcome:
        raise CommandError("interrupted")
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result
