"""Tests for ``mailserver user|alias|domain`` (mailserver.cli_accounts), run through cli.main."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from mailserver.address import parse_address
from mailserver.cli import main
from mailserver.interfaces import Lookup, RecipientLookup
from mailserver.passwords import Passwords
from mailserver.userdb import SQLiteAccounts, database_path

CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
CHEAP = Passwords(CHEAP_HASHER)

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands hash with library defaults (tested in test_passwords); here, cheaply."""
    monkeypatch.setattr("mailserver.passwords.PasswordHasher", lambda: CHEAP_HASHER)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def run(
    tmp_path: Path,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Run:
    """Run ``mailserver --config FILE ARGS...`` with ``stdin``; returns (status, out, err)."""
    config = tmp_path / "mailserver.toml"
    config.write_text(f'[server]\nhostname = "mx.example.org"\ndata_dir = "{data_dir}"\n')

    def run(*args: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        status = main(["--config", str(config), *args])
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture
def prompts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Answers for getpass, consumed in order; an exhausted list means end of input."""
    answers: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        if not answers:
            raise EOFError
        return answers.pop(0)

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    return answers


def accounts(data_dir: Path) -> SQLiteAccounts:
    return SQLiteAccounts(database_path(data_dir), passwords=CHEAP)


def check_password(data_dir: Path, address: str, password: str) -> bool:
    return accounts(data_dir).authenticate_sync(address, password) == address


def test_user_add_with_new_domain(run: Run, data_dir: Path) -> None:
    """The first user of a domain adds the domain too, says so, and creates the Maildir."""
    status, out, err = run("user", "add", "Bob@Example.ORG", "--password-stdin", stdin="s3cret\n")
    assert (status, err) == (0, "")
    assert out == "added domain example.org\nadded user bob@example.org\n"
    assert (data_dir / "mail" / "example.org" / "bob" / "new").is_dir()
    assert check_password(data_dir, "bob@example.org", "s3cret")


def test_user_add_in_existing_domain(run: Run) -> None:
    """A user in a known domain is added without mentioning the domain."""
    run("domain", "add", "example.org")
    status, out, _ = run("user", "add", "bob@example.org", "--password-stdin", stdin="pw\n")
    assert (status, out) == (0, "added user bob@example.org\n")


def test_user_add_prompts_twice(run: Run, data_dir: Path, prompts: list[str]) -> None:
    """Without --password-stdin the password is asked twice and must match."""
    prompts.extend(["typed", "typed"])
    status, out, _ = run("user", "add", "bob@example.org")
    assert status == 0 and "added user bob@example.org" in out
    assert check_password(data_dir, "bob@example.org", "typed")


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        (["one", "two"], "the two passwords differ"),
        ([""], "empty password refused"),
        ([], "no password given"),
    ],
)
def test_user_add_prompt_refusals(
    run: Run, prompts: list[str], answers: list[str], message: str
) -> None:
    """Differing, empty or missing typed passwords add nothing (not even the domain)."""
    prompts.extend(answers)
    status, _, err = run("user", "add", "bob@example.org")
    assert status == 1
    assert message in err and err.startswith("mailserver: ")
    assert run("user", "list")[1] == "" and run("domain", "list")[1] == ""


def test_empty_password_from_stdin_refused(run: Run) -> None:
    """An empty line on standard input is refused."""
    status, _, err = run("user", "add", "bob@example.org", "--password-stdin", stdin="\n")
    assert status == 1 and "empty password refused" in err


def test_existing_user_refused_before_prompting(run: Run, prompts: list[str]) -> None:
    """Adding an existing user fails at once, without asking for a password."""
    run("user", "add", "bob@example.org", "--password-stdin", stdin="pw\n")
    status, _, err = run("user", "add", "BOB@example.org")
    assert status == 1
    assert err == "mailserver: user bob@example.org already exists\n"


def test_user_add_refusal_leaves_no_new_domain(run: Run) -> None:
    """When the user cannot be added, the domain added for it is taken back."""
    status, _, err = run("user", "add", '"a/b"@new.example', "--password-stdin", stdin="pw\n")
    assert status == 1 and "cannot name a mailbox directory" in err
    assert run("domain", "list")[1] == ""


def test_invalid_address(run: Run) -> None:
    """An invalid address is one clear line and exit status 1."""
    status, out, err = run("user", "add", "not an address", "--password-stdin", stdin="pw\n")
    assert (status, out) == (1, "")
    assert err.startswith("mailserver: 'not an address': ") and err.count("\n") == 1


def test_user_list_sorted(run: Run) -> None:
    """Users are listed one per line, sorted."""
    for address in ("zed@example.org", "amy@example.org", "bob@a.example"):
        run("user", "add", address, "--password-stdin", stdin="pw\n")
    assert run("user", "list") == (0, "amy@example.org\nbob@a.example\nzed@example.org\n", "")


def test_user_passwd(run: Run, data_dir: Path, prompts: list[str]) -> None:
    """passwd replaces the password, from stdin or typed twice; unknown users are refused."""
    run("user", "add", "bob@example.org", "--password-stdin", stdin="old\n")
    status, out, _ = run("user", "passwd", "bob@example.org", "--password-stdin", stdin="new\n")
    assert (status, out) == (0, "changed the password of bob@example.org\n")
    assert check_password(data_dir, "bob@example.org", "new")
    prompts.extend(["newer", "newer"])
    assert run("user", "passwd", "bob@example.org")[0] == 0
    assert check_password(data_dir, "bob@example.org", "newer")
    status, _, err = run("user", "passwd", "nobody@example.org", "--password-stdin", stdin="x\n")
    assert (status, err) == (1, "mailserver: no such user: nobody@example.org\n")


def test_user_remove(run: Run, data_dir: Path) -> None:
    """remove says the Maildir is kept and warns about aliases still pointing at the user."""
    run("user", "add", "bob@example.org", "--password-stdin", stdin="pw\n")
    run("alias", "add", "postmaster@example.org", "bob@example.org")
    status, out, err = run("user", "remove", "bob@example.org")
    maildir = data_dir / "mail" / "example.org" / "bob"
    assert status == 0
    assert out == f"removed user bob@example.org\nkept its Maildir {maildir}\n"
    assert "alias postmaster@example.org -> bob@example.org remains" in err
    assert maildir.is_dir()
    assert run("user", "list")[1] == ""
    assert run("user", "remove", "bob@example.org")[0] == 1


def test_aliases(run: Run) -> None:
    """alias add/list/remove, with catch-alls, one target or all, sorted output."""
    run("user", "add", "bob@example.org", "--password-stdin", stdin="pw\n")
    run("user", "add", "amy@example.org", "--password-stdin", stdin="pw\n")
    status, out, err = run("alias", "add", "Team@example.org", "bob@example.org", "amy@example.org")
    assert (status, err) == (0, "")
    assert out == (
        "added alias team@example.org -> bob@example.org\n"
        "added alias team@example.org -> amy@example.org\n"
    )
    assert run("alias", "add", "@example.org", "bob@example.org")[0] == 0
    assert run("alias", "list")[1] == (
        "@example.org -> bob@example.org\n"
        "team@example.org -> amy@example.org\n"
        "team@example.org -> bob@example.org\n"
    )
    status, out, _ = run("alias", "remove", "team@example.org", "amy@example.org")
    assert (status, out) == (0, "removed alias team@example.org -> amy@example.org\n")
    status, out, _ = run("alias", "remove", "@example.org")
    assert (status, out) == (0, "removed alias @example.org -> bob@example.org\n")
    assert run("alias", "list")[1] == "team@example.org -> bob@example.org\n"


def test_alias_to_unknown_target_warns(run: Run) -> None:
    """A target that is neither user nor alias is accepted with a warning."""
    run("domain", "add", "example.org")
    status, out, err = run("alias", "add", "info@example.org", "later@example.org")
    assert status == 0 and out == "added alias info@example.org -> later@example.org\n"
    assert err == "warning: later@example.org is neither a user nor an alias yet\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("info@example.org", "someone@gmail.com"), "forwarding to other domains"),
        (("info@example.net", "bob@example.org"), "example.net is not one of our domains"),
        (("bob@example.org", "amy@example.org"), "bob@example.org is a user"),
    ],
)
def test_alias_refusals(run: Run, args: tuple[str, ...], message: str) -> None:
    """Refused aliases give one line on stderr and exit status 1."""
    run("user", "add", "bob@example.org", "--password-stdin", stdin="pw\n")
    status, out, err = run("alias", "add", *args)
    assert (status, out) == (1, "")
    assert message in err and err.count("\n") == 1


def test_domains(run: Run) -> None:
    """domain add/list/remove; IDNA domains show both forms; busy domains are kept."""
    assert run("domain", "add", "Example.ORG") == (0, "added domain example.org\n", "")
    status, out, _ = run("domain", "add", "bücher.example")
    assert out == "added domain xn--bcher-kva.example (bücher.example)\n"
    assert run("domain", "list")[1] == "example.org\nxn--bcher-kva.example\n"
    assert run("domain", "add", "example.org")[2] == (
        "mailserver: domain example.org already exists\n"
    )
    run("user", "add", "bob@example.org", "--password-stdin", stdin="pw\n")
    status, _, err = run("domain", "remove", "example.org")
    assert (status, err) == (
        1,
        "mailserver: domain example.org still has 1 user: remove them first\n",
    )
    assert run("domain", "remove", "xn--bcher-kva.example")[0] == 0
    assert run("domain", "list")[1] == "example.org\n"


def test_running_server_sees_changes(run: Run, data_dir: Path) -> None:
    """A lookup in an already open database sees users added by the command afterwards."""
    run("domain", "add", "example.org")
    server = accounts(data_dir)
    bob = parse_address("bob@example.org")
    assert server.resolve_recipient_sync(bob) == RecipientLookup(Lookup.NO_SUCH_USER)
    run("user", "add", "bob@example.org", "--password-stdin", stdin="pw\n")
    assert server.resolve_recipient_sync(bob) == RecipientLookup(
        Lookup.DELIVER, ("bob@example.org",)
    )


def test_bad_config_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A broken configuration file stops the command with its problem."""
    config = tmp_path / "broken.toml"
    config.write_text("[server]\nno_such_key = 1\n")
    assert main(["--config", str(config), "user", "list"]) == 1
    assert "no_such_key" in capsys.readouterr().err
