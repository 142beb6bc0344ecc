"""Tests for mailserver.address: RFC 5321 paths, RFC 6531 forms, quoting and normalisation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailserver.address import (
    MAX_DOMAIN,
    MAX_LOCAL_PART,
    MAX_PATH,
    AddressError,
    Mailbox,
    normalize,
    normalize_domain,
    parse_address,
    parse_address_literal,
    parse_domain,
    parse_mailbox,
    parse_path,
    quote_local_part,
)


def domain_of_length(length: int) -> str:
    """A valid LDH domain of exactly ``length`` characters (labels of at most 63)."""
    labels = []
    remaining = length
    while remaining > 63:
        labels.append("a" * 62)  # 62 characters plus the dot that follows
        remaining -= 63
    labels.append("b" * remaining)
    domain = ".".join(labels)
    assert len(domain) == length
    return domain


# -- local parts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, local_part",
    [
        ("bob@example.com", "bob"),
        ("first.last@example.com", "first.last"),
        ("a+tag@example.com", "a+tag"),
        ("o'brien@example.com", "o'brien"),
        ("!#$%&'*+-/=?^_`{|}~@example.com", "!#$%&'*+-/=?^_`{|}~"),
    ],
)
def test_dot_atom_local_parts(text: str, local_part: str) -> None:
    """Dot-atom local parts made of any RFC 5322 atext characters parse unchanged."""
    assert parse_mailbox(text) == Mailbox(local_part, "example.com")


@pytest.mark.parametrize("local", [".bob", "bob.", "bo..b", "bo b", "bo\\b", 'bo"b', "bo,b"])
def test_invalid_dot_atom_local_parts(local: str) -> None:
    """Leading, trailing or doubled dots and specials outside quotes are refused."""
    with pytest.raises(AddressError):
        parse_mailbox(f"{local}@example.com")


@pytest.mark.parametrize(
    "text, local_part",
    [
        ('"john smith"@example.com', "john smith"),
        ('"say \\"hi\\""@example.com', 'say "hi"'),
        ('"back\\\\slash"@example.com', "back\\slash"),
        ('"user@other.example"@example.com', "user@other.example"),
        ('"a..b"@example.com', "a..b"),
        ('"odd> name"@example.com', "odd> name"),
    ],
)
def test_quoted_local_parts(text: str, local_part: str) -> None:
    """Quoted local parts (spaces, escaped quotes and backslashes, an ``@``) are unquoted."""
    assert parse_mailbox(text) == Mailbox(local_part, "example.com")


@pytest.mark.parametrize(
    "text",
    ['"unterminated@example.com', '"a"b@example.com', '"a"', '""@example.com', '"tab\there"@x.com'],
)
def test_invalid_quoted_local_parts(text: str) -> None:
    """Unterminated quotes, text after the closing quote, empty or control characters fail."""
    with pytest.raises(AddressError):
        parse_mailbox(text)


@pytest.mark.parametrize(
    "text, local_part",
    [
        ("user%other.example@ours.example", "user%other.example"),
        ("other.example!user@ours.example", "other.example!user"),
        ("a%b!c@ours.example", "a%b!c"),
    ],
)
def test_percent_and_bang_are_ordinary_characters(text: str, local_part: str) -> None:
    """``%`` and ``!`` are plain atext: the domain stays ours, nothing is treated as a route."""
    mailbox = parse_mailbox(text)
    assert mailbox == Mailbox(local_part, "ours.example")
    assert mailbox.domain == "ours.example"


def test_non_ascii_local_part() -> None:
    """RFC 6531 UTF-8 local parts parse, and the mailbox reports itself as non-ASCII."""
    mailbox = parse_mailbox("jöran@example.com")
    assert mailbox == Mailbox("jöran", "example.com")
    assert not mailbox.is_ascii
    assert parse_mailbox("bob@example.com").is_ascii


def test_non_ascii_domain_is_not_ascii() -> None:
    """A U-label domain makes the mailbox non-ASCII (it needs SMTPUTF8 in the envelope)."""
    mailbox = parse_mailbox("bob@bücher.example")
    assert mailbox.domain == "bücher.example"
    assert not mailbox.is_ascii


# -- quoting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "local_part, quoted",
    [
        ("bob", "bob"),
        ("first.last", "first.last"),
        ("john smith", '"john smith"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("a@b", '"a@b"'),
        (".lead", '".lead"'),
        ("a..b", '"a..b"'),
    ],
)
def test_quote_local_part_shortest_form(local_part: str, quoted: str) -> None:
    """Dot-strings stay bare; anything else is quoted with ``"`` and ``\\`` escaped."""
    assert quote_local_part(local_part) == quoted
    assert parse_mailbox(f"{quoted}@example.com").local_part == local_part


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1))
def test_quote_local_part_round_trip(local_part: str) -> None:
    """For any printable ASCII local part, quoting then parsing gives the same local part."""
    quoted = quote_local_part(local_part)
    if len(quoted) > MAX_LOCAL_PART:
        with pytest.raises(AddressError):
            parse_mailbox(f"{quoted}@example.com")
    else:
        assert parse_mailbox(f"{quoted}@example.com").local_part == local_part


def test_str_writes_shortest_form() -> None:
    """``str(mailbox)`` removes needless quotes and keeps needed ones."""
    assert str(parse_mailbox('"bob"@example.com')) == "bob@example.com"
    assert str(parse_mailbox('"john smith"@example.com')) == '"john smith"@example.com'


_ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
_atom = st.text(alphabet=_ATEXT, min_size=1, max_size=12)
_local_parts = st.lists(_atom, min_size=1, max_size=5).map(".".join).filter(lambda s: len(s) <= 64)
_labels = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,20}[A-Za-z0-9])?", fullmatch=True)
_domains = st.lists(_labels, min_size=1, max_size=5).map(".".join)


@given(_local_parts, _domains)
def test_parse_str_round_trip(local_part: str, domain: str) -> None:
    """For valid dot-atom local parts and LDH domains, ``parse_mailbox(str(m)) == m``."""
    mailbox = Mailbox(local_part, domain)
    assert parse_mailbox(str(mailbox)) == mailbox


# -- normalisation ----------------------------------------------------------------------------


def test_normalisation_folds_case() -> None:
    """Local part and domain compare case-insensitively."""
    assert normalize("Bob.Smith@Example.COM") == "bob.smith@example.com"
    assert normalize("STRASSE@example.com") == normalize("straße@example.com")


def test_normalisation_uses_a_label_domain() -> None:
    """A U-label domain normalises to its lower-case IDNA A-label form."""
    assert normalize("bob@Bücher.example") == "bob@xn--bcher-kva.example"
    assert normalize_domain("BÜCHER.example") == "xn--bcher-kva.example"


def test_sharp_s_keeps_its_own_a_label() -> None:
    """IDNA 2008 keeps ``ß`` (RFC 5892 makes it PVALID): ``straße.example`` is
    ``xn--strae-oqa.example``, never IDNA 2003's ``strasse.example``, which is another
    domain with another owner."""
    assert normalize_domain("straße.example") == "xn--strae-oqa.example"
    assert normalize_domain("Straße.example") == "xn--strae-oqa.example"
    assert normalize("bob@straße.example") != normalize("bob@strasse.example")


def test_zwnj_kept_where_its_context_allows_it() -> None:
    """RFC 5892 Appendix A.1: ZWNJ between Arabic joining letters is valid and part of the
    name (IDNA 2003 dropped it, merging two domains); next to Latin letters it is refused."""
    # Persian "nameh-i" (a letter): the suffix kept apart by ZWNJ, as Persian writes it.
    persian = "\u0646\u0627\u0645\u0647\u200c\u0627\u06cc.example"
    with_joiner = normalize_domain(persian)
    assert with_joiner == "xn--mgba3gch31f060k.example"
    assert with_joiner != normalize_domain(persian.replace("\u200c", ""))
    with pytest.raises(AddressError, match=r"(?i)joiner"):
        normalize_domain("bü\u200cch.example")


def test_upper_case_and_full_width_u_labels_are_mapped() -> None:
    """UTS #46 maps case and width before encoding, so every spelling a user may type
    gives one key; the A-label comes out lower-case."""
    expected = "xn--bcher-kva.example"
    for spelling in ("BÜCHER.EXAMPLE", "Bücher.Example", "ＢÜＣＨＥＲ.example"):
        assert normalize_domain(spelling) == expected


def test_a_label_input_is_kept_lower_cased() -> None:
    """An all-ASCII domain, A-labels included, is only lower-cased; an A-label next to a
    U-label gives the same key as the U-label would."""
    assert normalize_domain("XN--BCHER-KVA.example") == "xn--bcher-kva.example"
    assert normalize_domain("xn--strae-oqa.example") == normalize_domain("straße.example")
    mixed = normalize_domain("xn--bcher-kva.bücher.example")
    assert mixed == "xn--bcher-kva.xn--bcher-kva.example"


@pytest.mark.parametrize(
    "domain, reason",
    [
        ("\U0001f600.example", "U+1F600"),  # emoji: DISALLOWED since IDNA 2008
        ("bü.ex ample", "U+0020"),
        ("xn--zz.bücher.example", "Invalid A-label"),
        ("ab--c.bücher.example", "hyphens"),
        ("bü" + "x" * 62 + ".example", "too long"),
    ],
)
def test_invalid_internationalised_domains(domain: str, reason: str) -> None:
    """A name IDNA 2008 refuses raises AddressError naming the domain and idna's reason,
    from normalisation and from parsing alike."""
    with pytest.raises(AddressError, match="invalid internationalised domain") as caught:
        normalize_domain(domain)
    assert reason in str(caught.value)
    with pytest.raises(AddressError):
        parse_mailbox(f"bob@{domain}")


def test_needless_quotes_do_not_change_meaning() -> None:
    """``"bob"@x`` is the same mailbox as ``bob@x``."""
    assert parse_mailbox('"bob"@example.com') == parse_mailbox("bob@example.com")
    assert normalize('"Bob"@example.com') == normalize("bob@example.com")


def test_quoted_local_part_is_not_an_unquoted_one() -> None:
    """A local part that needs quotes never normalises to the same key as a dot-atom."""
    assert normalize('"bob smith"@example.com') != normalize("bob.smith@example.com")
    assert normalize('"bob smith"@example.com') != normalize("bobsmith@example.com")


def test_parse_address_strips_surrounding_spaces() -> None:
    """Addresses typed by an administrator may carry surrounding whitespace."""
    assert parse_address("  bob@example.com \n") == Mailbox("bob", "example.com")


def test_address_literal_normalises_lower_case() -> None:
    """Address literals normalise lower-cased and are flagged as literals."""
    mailbox = parse_mailbox("bob@[IPv6:2001:DB8::1]")
    assert mailbox.is_address_literal
    assert mailbox.normalized() == "bob@[ipv6:2001:db8::1]"
    assert not parse_mailbox("bob@example.com").is_address_literal


# -- domains ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "domain", ["example.com.", "", "-example.com", "example-.com", "exa_mple.com", "a..b", ".a"]
)
def test_invalid_domains(domain: str) -> None:
    """Trailing dots, empty labels, hyphens at label ends and underscores are refused."""
    with pytest.raises(AddressError):
        parse_domain(domain)


def test_trailing_dot_refused_in_mailbox() -> None:
    """``user@example.com.`` is not a valid RFC 5321 Mailbox."""
    with pytest.raises(AddressError):
        parse_mailbox("user@example.com.")


def test_label_length_limit() -> None:
    """A label may be 63 characters, not 64."""
    assert parse_domain("a" * 63 + ".example") == "a" * 63 + ".example"
    with pytest.raises(AddressError):
        parse_domain("a" * 64 + ".example")


def test_u_label_domain_accepted_unchanged() -> None:
    """A U-label domain is accepted as given; normalisation converts it."""
    assert parse_domain("bücher.example") == "bücher.example"


# -- address literals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "literal",
    ["[192.0.2.1]", "[IPv6:2001:db8::1]", "[IPv6:::1]", "[ipv6:::1]", "[IPv6:::ffff:192.0.2.1]"],
)
def test_valid_address_literals(literal: str) -> None:
    """IPv4 and tagged IPv6 address literals (RFC 5321 §4.1.3) are accepted."""
    assert parse_address_literal(literal) == literal
    assert parse_mailbox(f"user@{literal}").domain == literal


@pytest.mark.parametrize(
    "literal",
    [
        "[192.0.2.256]",
        "[192.0.2]",
        "[192.0.2.01]",
        "[::1]",
        "[IPv6:192.0.2.1]",
        "[IPv6:2001:db8::g]",
        "[IPv6:fe80::1%eth0]",
        "[IPv6:fe80::1%x);\tby]",
        "[]",
        "[general:tag]",
    ],
)
def test_invalid_address_literals(literal: str) -> None:
    """Bad IPv4 or IPv6 text, a missing IPv6 tag, zone identifiers and other tags fail."""
    with pytest.raises(AddressError):
        parse_mailbox(f"user@{literal}")


def test_unclosed_literal_is_not_a_literal() -> None:
    """``[192.0.2.1`` without its closing bracket is refused (as a domain it is invalid)."""
    with pytest.raises(AddressError):
        parse_mailbox("user@[192.0.2.1")


# -- length limits ----------------------------------------------------------------------------


def test_local_part_length_limit() -> None:
    """RFC 5321 §4.5.3.1.1: a local part of 64 octets is accepted, 65 refused."""
    assert parse_mailbox("a" * MAX_LOCAL_PART + "@example.com").local_part == "a" * 64
    with pytest.raises(AddressError):
        parse_mailbox("a" * (MAX_LOCAL_PART + 1) + "@example.com")


def test_local_part_length_counts_utf8_octets() -> None:
    """The local part limit is in octets: 33 two-octet characters (66 octets) are too many."""
    assert parse_mailbox("é" * 32 + "@example.com").local_part == "é" * 32
    with pytest.raises(AddressError):
        parse_mailbox("é" * 33 + "@example.com")


def test_domain_length_limit() -> None:
    """RFC 5321 §4.5.3.1.2: a domain of 255 octets is accepted, 256 refused."""
    assert parse_domain(domain_of_length(MAX_DOMAIN)) == domain_of_length(255)
    with pytest.raises(AddressError):
        parse_domain(domain_of_length(MAX_DOMAIN + 1))


def test_path_length_limit() -> None:
    """RFC 5321 §4.5.3.1.3: a path of 256 octets (brackets included) is accepted, 257 not."""
    local = "a" * 64
    fits = f"<{local}@{domain_of_length(MAX_PATH - 2 - 65)}>"
    assert len(fits) == MAX_PATH
    assert parse_path(fits, allow_null=False) is not None
    too_long = f"<{local}@{domain_of_length(MAX_PATH - 2 - 64)}>"
    assert len(too_long) == MAX_PATH + 1
    with pytest.raises(AddressError):
        parse_path(too_long, allow_null=False)


# -- paths ------------------------------------------------------------------------------------


def test_null_path_where_allowed() -> None:
    """``<>`` is the null reverse-path (MAIL FROM) and returns None."""
    assert parse_path("<>", allow_null=True) is None


def test_null_path_where_not_allowed() -> None:
    """``<>`` is refused where a mailbox is required (RCPT TO)."""
    with pytest.raises(AddressError):
        parse_path("<>", allow_null=False)


def test_path_with_angle_brackets() -> None:
    """A bracketed path gives its mailbox."""
    assert parse_path("<bob@example.com>", allow_null=False) == Mailbox("bob", "example.com")


def test_bare_path_tolerated() -> None:
    """A path without angle brackets is tolerated (old clients)."""
    assert parse_path("bob@example.com", allow_null=False) == Mailbox("bob", "example.com")


@pytest.mark.parametrize("text", ["<bob@example.com", "<bob@example.com>>", "<<bob@example.com>"])
def test_unbalanced_brackets_refused(text: str) -> None:
    """A missing or extra angle bracket is a syntax error."""
    with pytest.raises(AddressError):
        parse_path(text, allow_null=True)


@pytest.mark.parametrize(
    "text",
    ["<@ours.example:user@other.example>", "<@a.example,@b.example:user@other.example>"],
)
def test_source_route_accepted_and_stripped(text: str) -> None:
    """RFC 5321 §4.1.1.3 / Appendix C: a source route is accepted and ignored."""
    assert parse_path(text, allow_null=False) == Mailbox("user", "other.example")


@pytest.mark.parametrize(
    "text",
    [
        "<@ours.example user@other.example>",
        "<@ours.example,b.example:user@other.example>",
        "<@bad_domain:user@other.example>",
        "<@:user@other.example>",
    ],
)
def test_invalid_source_routes(text: str) -> None:
    """A source route without its colon, a hop without ``@`` or a bad hop domain fails."""
    with pytest.raises(AddressError):
        parse_path(text, allow_null=False)


def test_quoted_path_with_specials() -> None:
    """A quoted local part with ``>`` and a space survives inside angle brackets."""
    assert parse_path('<"odd> name"@example.com>', allow_null=False) == Mailbox(
        "odd> name", "example.com"
    )


def test_address_without_domain_refused() -> None:
    """A bare local part (no ``@domain``) is not a Mailbox."""
    with pytest.raises(AddressError):
        parse_mailbox("bob")
    with pytest.raises(AddressError):
        parse_mailbox("bob@")
