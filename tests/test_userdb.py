"""Tests for mailserver.userdb (SQLite backend, resolution rules) and its in-memory twin.

The SQLite backend's Deferred methods are driven through :class:`ImmediateThreadPool` and
:class:`ImmediateReactor`: stand-ins that run the work and fire the Deferred at once, in the
test's own thread, so no test waits on a real thread (one test uses a real ThreadPool to
check the per-thread connections).
"""

from __future__ import annotations

import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from argon2 import PasswordHasher
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface.verify import verifyObject

from mailserver import userdb
from mailserver.address import Mailbox, parse_address
from mailserver.interfaces import IUserDatabase, Lookup, RecipientLookup
from mailserver.maildir import maildir_path
from mailserver.memory import MemoryUserDatabase
from mailserver.passwords import Passwords
from mailserver.userdb import (
    MAX_ALIAS_DEPTH,
    SCHEMA_VERSION,
    AccountError,
    SQLiteAccounts,
    SQLiteUserDatabase,
    database_path,
    parse_login,
)
from tests.immediate import ImmediateReactor, ImmediateThreadPool

T = TypeVar("T")

CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def result_of(deferred: Deferred[T]) -> T:
    """The result of a Deferred that has already fired (its failure is raised)."""
    results: list[T | Failure] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def sqlite_db(
    tmp_path: Path, delimiter: str = "+", hasher: PasswordHasher = CHEAP_HASHER
) -> SQLiteUserDatabase:
    db = SQLiteUserDatabase(
        database_path(tmp_path),
        ImmediateReactor(),  # type: ignore[arg-type]
        ImmediateThreadPool(),  # type: ignore[arg-type]
        delimiter,
        passwords=Passwords(hasher),
    )
    db.open()  # as the server does at start-up
    return db


def make_backend(kind: str, tmp_path: Path, delimiter: str = "+") -> Any:
    if kind == "sqlite":
        return sqlite_db(tmp_path, delimiter)
    return MemoryUserDatabase(recipient_delimiter=delimiter)


BACKENDS = ["sqlite", "memory"]


def populate(db: Any) -> None:
    """The accounts the resolution table runs against, made with the admin methods."""
    for domain in ("example.org", "bücher.example", "catchall.example"):
        db.add_domain(domain)
    for user in (
        "bob@example.org",
        "alice@example.org",
        "carol@example.org",
        "pépé@bücher.example",
        "real@catchall.example",
        "bob-x@example.org",
    ):
        db.add_user(user, "pw")
    aliases = {
        "postmaster@example.org": ["bob@example.org"],
        "team@example.org": ["carol@example.org", "alice@example.org", "bob@example.org"],
        "chain1@example.org": ["chain2@example.org"],
        "chain2@example.org": ["chain3@example.org"],
        "chain3@example.org": ["carol@example.org"],
        "loop-a@example.org": ["loop-b@example.org"],
        "loop-b@example.org": ["loop-a@example.org"],
        "partial@example.org": ["partial-b@example.org", "alice@example.org"],
        "partial-b@example.org": ["partial@example.org"],
        "ghost@example.org": ["gone@example.org"],
        "half-ghost@example.org": ["gone@example.org", "bob@example.org"],
        "loop-and-ghost@example.org": ["loop-a@example.org", "gone@example.org"],
        "diamond@example.org": ["d1@example.org", "d2@example.org"],
        "d1@example.org": ["bob@example.org"],
        "d2@example.org": ["bob@example.org", "d1@example.org"],
        "bob+special@example.org": ["alice@example.org"],
        "@catchall.example": ["bob@example.org", "carol@example.org"],
        "info@bücher.example": ["pépé@bücher.example", "alice@example.org"],
    }
    for source, targets in aliases.items():
        db.add_alias(source, targets)


@pytest.fixture(scope="module")
def populated_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory whose user database holds :func:`populate`'s accounts (made once)."""
    data_dir = tmp_path_factory.mktemp("populated")
    populate(sqlite_db(data_dir))
    return data_dir


BOB = "bob@example.org"
ALICE = "alice@example.org"
CAROL = "carol@example.org"
PEPE = "pépé@xn--bcher-kva.example"

DELIVER, NOT_OURS, NO_USER, LOOP = (
    Lookup.DELIVER,
    Lookup.NOT_OUR_DOMAIN,
    Lookup.NO_SUCH_USER,
    Lookup.ALIAS_LOOP,
)

# (recipient as written in RCPT TO, recipient delimiter, outcome, mailboxes, rule pinned)
RESOLUTION_TABLE = [
    ("bob@example.org", "+", DELIVER, (BOB,), "exact user"),
    ("BoB@EXAMPLE.Org", "+", DELIVER, (BOB,), "local part and domain are case-insensitive"),
    ('"bob"@example.org', "+", DELIVER, (BOB,), "needless quoting is ignored"),
    ('"b o b"@example.org', "+", NO_USER, (), "a quoted local part is not another's"),
    ("bob@example.net", "+", NOT_OURS, (), "domain not in the list is not ours"),
    ("bob@sub.example.org", "+", NOT_OURS, (), "subdomains are not ours"),
    ("bob@[192.0.2.1]", "+", NOT_OURS, (), "an address literal is never ours"),
    ("nobody@example.org", "+", NO_USER, (), "our domain, nobody by that name"),
    ("pépé@bücher.example", "+", DELIVER, (PEPE,), "IDNA U-label domain"),
    ("PÉPÉ@BÜCHER.example", "+", DELIVER, (PEPE,), "Unicode local part casefolded"),
    ("pépé@xn--bcher-kva.example", "+", DELIVER, (PEPE,), "IDNA A-label domain"),
    ("bob+tag@example.org", "+", DELIVER, (BOB,), "subaddress to the user"),
    ("BOB+Tag@example.org", "+", DELIVER, (BOB,), "subaddress, case-insensitive"),
    ("bob+a+b@example.org", "+", DELIVER, (BOB,), "cut at the first delimiter"),
    ("bob+tag@example.org", "", NO_USER, (), "no subaddressing without a delimiter"),
    ("bob+tag@example.org", "-", NO_USER, (), "only the configured delimiter counts"),
    ("bob-x@example.org", "-", DELIVER, ("bob-x@example.org",), "exact user before subaddress"),
    ("bob-y@example.org", "-", DELIVER, (BOB,), "another delimiter character"),
    ("+tag@example.org", "+", NO_USER, (), "nothing before the delimiter: no retry"),
    ("bob+special@example.org", "+", DELIVER, (ALICE,), "exact alias before subaddress"),
    ("postmaster@example.org", "+", DELIVER, (BOB,), "exact alias"),
    ("Postmaster@Example.org", "+", DELIVER, (BOB,), "alias is case-insensitive"),
    ("postmaster+x@example.org", "+", DELIVER, (BOB,), "subaddress of an alias"),
    ("team@example.org", "+", DELIVER, (ALICE, BOB, CAROL), "fan-out, sorted"),
    ("chain1@example.org", "+", DELIVER, (CAROL,), "alias chain"),
    ("loop-a@example.org", "+", LOOP, (), "a cycle reaching nobody"),
    ("partial@example.org", "+", DELIVER, (ALICE,), "a cycle that also reaches a user"),
    ("ghost@example.org", "+", NO_USER, (), "a dangling target"),
    ("half-ghost@example.org", "+", DELIVER, (BOB,), "one dangling target among others"),
    ("loop-and-ghost@example.org", "+", LOOP, (), "cycle and dangling target: the loop"),
    ("diamond@example.org", "+", DELIVER, (BOB,), "two paths to one user: once"),
    ("info@bücher.example", "+", DELIVER, (ALICE, PEPE), "alias in an IDNA domain"),
    ("anyone@catchall.example", "+", DELIVER, (BOB, CAROL), "catch-all"),
    ("real@catchall.example", "+", DELIVER, ("real@catchall.example",), "user before catch-all"),
    ("real+x@catchall.example", "+", DELIVER, ("real@catchall.example",), "subaddress first"),
    ("nobody@bücher.example", "+", NO_USER, (), "catch-all of another domain does not apply"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("recipient", "delimiter", "outcome", "mailboxes", "rule"),
    RESOLUTION_TABLE,
    ids=[row[4] for row in RESOLUTION_TABLE],
)
def test_resolution_table(
    backend: str,
    recipient: str,
    delimiter: str,
    outcome: Lookup,
    mailboxes: tuple[str, ...],
    rule: str,
    populated_data_dir: Path,
) -> None:
    """Both backends resolve each recipient of the table the same, documented way."""
    if backend == "sqlite":
        db = sqlite_db(populated_data_dir, delimiter)  # lookups do not change the file
    else:
        db = make_backend(backend, populated_data_dir, delimiter)
        populate(db)
    found = result_of(db.resolve_recipient(parse_address(recipient)))
    assert found == RecipientLookup(outcome, mailboxes), rule


@pytest.mark.parametrize("backend", BACKENDS)
def test_alias_depth_limit(backend: str, tmp_path: Path) -> None:
    """A chain of MAX_ALIAS_DEPTH aliases is followed; one more is answered as a loop."""
    db = make_backend(backend, tmp_path)
    db.add_domain("example.org")
    db.add_user("end@example.org", "pw")
    depth = MAX_ALIAS_DEPTH + 1
    for n in range(1, depth):
        db.add_alias(f"a{n}@example.org", [f"a{n + 1}@example.org"])
    db.add_alias(f"a{depth}@example.org", ["end@example.org"])
    deepest_allowed = parse_address("a2@example.org")
    too_deep = parse_address("a1@example.org")
    assert result_of(db.resolve_recipient(deepest_allowed)) == RecipientLookup(
        DELIVER, ("end@example.org",)
    )
    assert result_of(db.resolve_recipient(too_deep)) == RecipientLookup(LOOP)


@pytest.mark.parametrize("backend", BACKENDS)
def test_interface(backend: str, tmp_path: Path) -> None:
    """Both backends provide IUserDatabase."""
    assert verifyObject(IUserDatabase, make_backend(backend, tmp_path))


def test_mailbox_not_from_parser(tmp_path: Path) -> None:
    """A Mailbox with an undecodable domain built by hand is not ours rather than an error."""
    db = sqlite_db(tmp_path)
    db.add_domain("example.org")
    found = result_of(db.resolve_recipient(Mailbox("bob", "bad\udcff.example")))
    assert found == RecipientLookup(NOT_OURS)


# --- authenticate ---------------------------------------------------------------------------


def accounts_for_login(db: Any) -> None:
    db.add_domain("example.org")
    db.add_domain("example.net")
    db.add_user("bob@example.org", "bob's secret")
    db.add_user("alice@example.org", "alice's secret")
    db.add_user("alice@example.net", "other alice")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("login", "password", "expected", "rule"),
    [
        ("bob@example.org", "bob's secret", BOB, "full address"),
        ("BOB@Example.ORG", "bob's secret", BOB, "full address, normalised"),
        ("bob", "bob's secret", BOB, "bare local part of exactly one user"),
        ("Bob", "bob's secret", BOB, "bare local part, case-insensitive"),
        ("alice", "alice's secret", None, "bare local part shared by two users"),
        ("alice@example.net", "other alice", "alice@example.net", "full address disambiguates"),
        ("bob@example.org", "wrong", None, "wrong password"),
        ("bob@example.org", "BOB'S SECRET", None, "passwords are case-sensitive"),
        ("nobody@example.org", "bob's secret", None, "unknown user"),
        ("bob+tag@example.org", "bob's secret", None, "no subaddress in logins"),
        ("bob@[192.0.2.1]", "bob's secret", None, "address literal"),
        ("bad@@", "bob's secret", None, "invalid login"),
        ("", "bob's secret", None, "empty login"),
    ],
    ids=lambda value: value if isinstance(value, str) and " " in value else None,
)
def test_authenticate(
    backend: str, login: str, password: str, expected: str | None, rule: str, tmp_path: Path
) -> None:
    """Logins by full address or unambiguous bare local part; every refusal is None."""
    db = make_backend(backend, tmp_path)
    accounts_for_login(db)
    assert result_of(db.authenticate(login, password)) == expected, rule


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # type: ignore[override]
        self.verifications += 1
        return super().verify(hash, password)


@pytest.mark.parametrize("login", ["nobody@example.org", "alice", "bob@example.org", "bad@@"])
def test_every_refusal_costs_one_verification(login: str, tmp_path: Path) -> None:
    """Unknown, ambiguous, invalid and wrong-password logins all run one argon2 verify."""
    hasher = CountingHasher()
    db = sqlite_db(tmp_path, hasher=hasher)
    accounts_for_login(db)
    hasher.verifications = 0
    assert result_of(db.authenticate(login, "wrong")) is None
    assert hasher.verifications == 1


def stored_hash(path: Path, address: str) -> str:
    with sqlite3.connect(path) as connection:
        query = "SELECT password_hash FROM users WHERE address = ?"
        return str(connection.execute(query, (address,)).fetchone()[0])


def test_rehash_on_login(tmp_path: Path) -> None:
    """A hash with outdated parameters is replaced with a current one at a good login only."""
    old = sqlite_db(tmp_path, hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    old.add_domain("example.org")
    old.add_user(BOB, "secret")
    before = stored_hash(old.path, BOB)
    newer = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    db = sqlite_db(tmp_path, hasher=newer)
    assert result_of(db.authenticate(BOB, "wrong")) is None
    assert stored_hash(db.path, BOB) == before
    assert result_of(db.authenticate(BOB, "secret")) == BOB
    after = stored_hash(db.path, BOB)
    assert after != before
    assert "m=16,t=2,p=1" in after
    assert not newer.check_needs_rehash(after)
    assert result_of(db.authenticate(BOB, "secret")) == BOB
    assert stored_hash(db.path, BOB) == after  # no rehash when current


def test_passwords_are_argon2id_hashes(tmp_path: Path) -> None:
    """The database stores an argon2id hash, never the password."""
    db = sqlite_db(tmp_path)
    db.add_domain("example.org")
    db.add_user(BOB, "secret")
    assert stored_hash(db.path, BOB).startswith("$argon2id$")
    assert b"secret" not in db.path.read_bytes()


# --- The file -------------------------------------------------------------------------------


def test_file_setup(tmp_path: Path) -> None:
    """The file is created private, in WAL mode, with the schema version recorded."""
    db = sqlite_db(tmp_path / "new-data-dir")
    assert db.path == tmp_path / "new-data-dir" / "users.sqlite3"
    assert stat.S_IMODE(db.path.stat().st_mode) == 0o600
    with sqlite3.connect(db.path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_reopening_keeps_the_data(tmp_path: Path) -> None:
    """Opening an existing file keeps its contents (the schema is created only once)."""
    sqlite_db(tmp_path).add_domain("example.org")
    assert sqlite_db(tmp_path).list_domains() == ["example.org"]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file written by a newer version is not touched."""
    path = database_path(tmp_path)
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(AccountError, match="newer"):
        sqlite_db(tmp_path)


def test_change_through_another_connection_is_seen(tmp_path: Path) -> None:
    """A change made by another process (the admin command) is seen by the next lookup."""
    db = sqlite_db(tmp_path)
    db.add_domain("example.org")
    bob = parse_address(BOB)
    assert result_of(db.resolve_recipient(bob)) == RecipientLookup(NO_USER)
    assert result_of(db.authenticate(BOB, "secret")) is None
    admin = SQLiteAccounts(db.path, passwords=Passwords(CHEAP_HASHER))
    admin.add_user(BOB, "secret")
    assert result_of(db.resolve_recipient(bob)) == RecipientLookup(DELIVER, (BOB,))
    assert result_of(db.authenticate(BOB, "secret")) == BOB
    admin.set_password(BOB, "changed")
    assert result_of(db.authenticate(BOB, "secret")) is None
    admin.remove_user(BOB)
    assert result_of(db.resolve_recipient(bob)) == RecipientLookup(NO_USER)


def test_real_thread_pool(tmp_path: Path) -> None:
    """With a real ThreadPool, lookups run in worker threads, each with its own connection."""
    db_path = database_path(tmp_path)
    admin = SQLiteAccounts(db_path, passwords=Passwords(CHEAP_HASHER))
    admin.add_domain("example.org")
    admin.add_user(BOB, "secret")
    pool = ThreadPool(minthreads=2, maxthreads=2)
    pool.start()
    try:
        db = SQLiteUserDatabase(
            db_path,
            ImmediateReactor(),  # type: ignore[arg-type]
            pool,
            passwords=Passwords(CHEAP_HASHER),
        )
        results: list[object] = []
        done = threading.Event()

        def collect(result: object) -> None:
            results.append(result)
            if len(results) == 6:
                done.set()

        for _ in range(5):
            db.resolve_recipient(parse_address(BOB)).addBoth(collect)
        db.authenticate("bob", "secret").addBoth(collect)
        assert done.wait(10)
    finally:
        pool.stop()
    assert results.count(RecipientLookup(DELIVER, (BOB,))) == 5
    assert BOB in results


# --- Administration -------------------------------------------------------------------------


@pytest.fixture
def admin(tmp_path: Path) -> SQLiteAccounts:
    accounts = SQLiteAccounts(database_path(tmp_path), passwords=Passwords(CHEAP_HASHER))
    accounts.add_domain("example.org")
    return accounts


def test_add_user_creates_maildir(admin: SQLiteAccounts, tmp_path: Path) -> None:
    """Adding a user creates its private Maildir under data_dir/mail/domain/local."""
    assert admin.add_user("Bob@Example.org", "pw") == BOB
    maildir = tmp_path / "mail" / "example.org" / "bob"
    assert maildir_path(tmp_path, BOB) == maildir
    for sub in ("cur", "new", "tmp"):
        assert (maildir / sub).is_dir()
        assert stat.S_IMODE((maildir / sub).stat().st_mode) == 0o700
    assert admin.list_users() == [BOB]


def test_maildir_path_idna_and_refusals(tmp_path: Path) -> None:
    """Maildirs use the A-label domain; local parts that cannot be directories are refused."""
    assert maildir_path(tmp_path, PEPE) == tmp_path / "mail" / "xn--bcher-kva.example" / "pépé"
    for bad in ("a/b@example.org", ".@example.org", "..@example.org", "example.org", "@x"):
        with pytest.raises(ValueError):
            maildir_path(tmp_path, bad)


def test_remove_user_keeps_maildir(admin: SQLiteAccounts, tmp_path: Path) -> None:
    """Removing a user keeps its mail; adding it again reuses the same Maildir."""
    admin.add_user(BOB, "pw")
    message = tmp_path / "mail" / "example.org" / "bob" / "new" / "1.msg"
    message.write_text("hello")
    assert admin.remove_user(BOB) == BOB
    assert admin.list_users() == []
    assert message.exists()
    admin.add_user(BOB, "pw")
    assert message.exists()


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda a: a.add_domain("example.org"), "domain example.org already exists"),
        (lambda a: a.add_domain("[192.0.2.1]"), "address literal"),
        (lambda a: a.add_domain("bad_domain"), "invalid domain"),
        (lambda a: a.remove_domain("example.net"), "no such domain: example.net"),
        (lambda a: a.remove_domain("example.org"), "still has 1 user and 1 alias"),
        (lambda a: a.add_user("x@example.net", "pw"), "example.net is not one of our domains"),
        (lambda a: a.add_user("BOB@example.org", "pw"), "user bob@example.org already exists"),
        (lambda a: a.add_user("postmaster@example.org", "pw"), "is an alias"),
        (lambda a: a.add_user("new@example.org", ""), "empty password"),
        (lambda a: a.add_user("new@example.org", "a\nb"), "line breaks"),
        (lambda a: a.add_user('"a/b"@example.org', "pw"), "cannot name a mailbox directory"),
        (lambda a: a.add_user("not an address", "pw"), "'not an address'"),
        (lambda a: a.remove_user("nobody@example.org"), "no such user: nobody@example.org"),
        (lambda a: a.set_password("nobody@example.org", "pw"), "no such user"),
        (lambda a: a.set_password(BOB, ""), "empty password"),
        (lambda a: a.add_alias("bob@example.org", [ALICE]), "is a user"),
        (lambda a: a.add_alias("x@example.net", [BOB]), "not one of our domains"),
        (lambda a: a.add_alias("@example.net", [BOB]), "not one of our domains"),
        (lambda a: a.add_alias("x@example.org", ["y@gmail.com"]), "not supported yet"),
        (lambda a: a.add_alias("x@example.org", ["@example.org"]), "not a catch-all"),
        (lambda a: a.add_alias("x@example.org", ["X@example.org"]), "cannot point to itself"),
        (lambda a: a.add_alias("x@example.org", []), "at least one target"),
        (lambda a: a.add_alias("postmaster@example.org", [BOB]), "already exists"),
        (lambda a: a.remove_alias("nobody@example.org"), "no such alias: nobody@example.org"),
        (lambda a: a.remove_alias("postmaster@example.org", ALICE), "no such alias"),
    ],
)
def test_admin_refusals(
    admin: SQLiteAccounts, action: Callable[[SQLiteAccounts], object], message: str
) -> None:
    """Each refusal raises AccountError with a one-line message and changes nothing."""
    admin.add_user(BOB, "pw")
    admin.add_alias("postmaster@example.org", [BOB])
    before = (admin.list_domains(), admin.list_users(), admin.list_aliases())
    with pytest.raises(AccountError, match=message) as raised:
        action(admin)
    assert "\n" not in str(raised.value)
    assert (admin.list_domains(), admin.list_users(), admin.list_aliases()) == before


def test_refused_alias_adds_no_target(admin: SQLiteAccounts) -> None:
    """One bad target refuses the whole alias: none of its targets are added."""
    with pytest.raises(AccountError):
        admin.add_alias("x@example.org", [BOB, "y@gmail.com"])
    assert admin.list_aliases() == []


def test_aliases_admin(admin: SQLiteAccounts) -> None:
    """Aliases are normalised, listed sorted, and removed one target or all at once."""
    admin.add_user(BOB, "pw")
    assert admin.add_alias("Team@Example.org", ["Bob@example.org", "zed@example.org"]) == (
        "team@example.org",
        [BOB, "zed@example.org"],
    )
    assert admin.add_alias("@EXAMPLE.org", [BOB]) == ("@example.org", [BOB])
    assert admin.list_aliases() == [
        ("@example.org", BOB),
        ("team@example.org", BOB),
        ("team@example.org", "zed@example.org"),
    ]
    assert admin.is_alias("team@example.org") and not admin.is_alias(BOB)
    assert admin.remove_alias("team@example.org", "ZED@example.org") == (
        "team@example.org",
        ["zed@example.org"],
    )
    assert admin.remove_alias("@example.org") == ("@example.org", [BOB])
    assert admin.remove_alias("team@example.org") == ("team@example.org", [BOB])
    assert admin.list_aliases() == []


def test_domains_admin(admin: SQLiteAccounts) -> None:
    """Domains are stored as lower-case A-labels, listed sorted, and removable when empty."""
    assert admin.add_domain("Bücher.Example") == "xn--bcher-kva.example"
    assert admin.add_domain("A.example") == "a.example"
    assert admin.list_domains() == ["a.example", "example.org", "xn--bcher-kva.example"]
    assert admin.remove_domain("bücher.example") == "xn--bcher-kva.example"
    assert admin.list_domains() == ["a.example", "example.org"]


def test_set_password(admin: SQLiteAccounts, tmp_path: Path) -> None:
    """A new password replaces the old one."""
    admin.add_user(BOB, "old")
    admin.set_password(BOB, "new")
    db = sqlite_db(tmp_path)
    assert result_of(db.authenticate(BOB, "new")) == BOB
    assert result_of(db.authenticate(BOB, "old")) is None


def test_parse_login() -> None:
    """Logins become a normalised address or a casefolded bare local part, else None."""
    assert parse_login(" Bob@Example.ORG ") == BOB
    assert parse_login("Bob") == "bob"
    assert parse_login("bob@[192.0.2.1]") is None
    assert parse_login("@@") is None
    assert parse_login("   ") is None


def test_server_database_is_created_only_when_opened(tmp_path: Path) -> None:
    """The server's database object touches no file until open() (called at start-up, after
    twistd has dropped privileges), so the file belongs to the server's user."""
    db = SQLiteUserDatabase(
        database_path(tmp_path),
        ImmediateReactor(),  # type: ignore[arg-type]
        ImmediateThreadPool(),  # type: ignore[arg-type]
    )
    assert not database_path(tmp_path).exists()
    db.open()
    assert database_path(tmp_path).exists()


def test_recipient_lookups_are_cached_until_the_files_change(tmp_path: Path) -> None:
    """A repeated look-up is answered from memory, without the thread pool; a change made
    through another connection is seen by the next look-up all the same."""
    db = sqlite_db(tmp_path)
    db.add_domain("example.org")
    db.add_user(BOB, "secret")
    pool = db._threadpool
    bob = parse_address(BOB)
    assert result_of(db.resolve_recipient(bob)) == RecipientLookup(DELIVER, (BOB,))
    calls = pool.calls  # type: ignore[attr-defined]
    for _ in range(3):
        assert result_of(db.resolve_recipient(bob)) == RecipientLookup(DELIVER, (BOB,))
    assert pool.calls == calls  # type: ignore[attr-defined]
    SQLiteAccounts(db.path, passwords=Passwords(CHEAP_HASHER)).remove_user(BOB)
    assert result_of(db.resolve_recipient(bob)) == RecipientLookup(NO_USER)
    assert pool.calls == calls + 1  # type: ignore[attr-defined]


def test_cached_lookup_expires(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached answer is trusted for RECIPIENT_CACHE_TTL seconds at most."""
    db = sqlite_db(tmp_path)
    db.add_domain("example.org")
    db.add_user(BOB, "secret")
    pool = db._threadpool
    now = [1000.0]
    monkeypatch.setattr(userdb.time, "monotonic", lambda: now[0])
    bob = parse_address(BOB)
    result_of(db.resolve_recipient(bob))
    calls = pool.calls  # type: ignore[attr-defined]
    now[0] += userdb.RECIPIENT_CACHE_TTL - 1
    result_of(db.resolve_recipient(bob))
    assert pool.calls == calls  # type: ignore[attr-defined]
    now[0] += 2
    result_of(db.resolve_recipient(bob))
    assert pool.calls == calls + 1  # type: ignore[attr-defined]
