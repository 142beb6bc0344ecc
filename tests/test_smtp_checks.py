"""SPF, DKIM and DMARC through the SMTP glue: what mail from other servers is stored with,
what is refused at the end of the data, forged Authentication-Results fields, and DKIM
signatures on our users' mail. DNS is an in-memory fake; everything else is real."""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import dkim
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.names import dns

from mailserver.authcheck import CheckPolicy, InboundChecks
from mailserver.authlimit import LoginThrottle
from mailserver.dkim import SigningIdentity, SigningTable
from mailserver.dkimkeys import generate, parse_key
from mailserver.dnsquery import LookupFailed
from mailserver.logins import LoginChecker
from mailserver.smtp import replies
from mailserver.smtp.server import SMTPServerFactory
from mailserver.spool import Spool
from tests.fake_dns import FakeDNS, txt
from tests.test_dkim import pkcs1_pem
from tests.test_smtp_server import (
    ALICE,
    EHLO,
    PASSWORD,
    PEER,
    POLICY,
    SUBMISSION,
    Client,
    ServerTestCase,
    codes,
    message,
    plain,
)

KEY = parse_key(generate("rsa"))
OURS = "mx.ours.example"


SENDER_ZONE: dict[tuple[int, str], Sequence[Any] | Exception] = {
    (dns.TXT, "client.example"): txt("v=spf1 ip4:192.0.2.1 -all"),
    (dns.TXT, "_dmarc.client.example"): txt("v=DMARC1; p=reject"),
    (dns.TXT, "bank.example"): txt("v=spf1 ip4:198.51.100.7 -all"),
    (dns.TXT, "_dmarc.bank.example"): txt("v=DMARC1; p=reject"),
}
FROM_CLIENT = b"From: Alice <alice@client.example>\r\nSubject: hi\r\n\r\nHello.\r\n"
FROM_BANK = b"From: Bank <ceo@bank.example>\r\nSubject: pay\r\n\r\nPay now.\r\n"
MAIL_FROM_CLIENT = b"MAIL FROM:<alice@client.example>\r\nRCPT TO:<bob@ours.example>\r\n"


class ChecksTestCase(ServerTestCase):
    def checked_factory(self, dns_fake: FakeDNS, **policy: bool) -> SMTPServerFactory:
        """A factory whose checks ask ``dns_fake``, with the policy's switches."""
        checks = InboundChecks(
            dns_fake,  # type: ignore[arg-type]
            CheckPolicy(authserv_id=OURS, **policy),
            self.clock,
        )
        return self.factory(checks=checks)

    def logged_in(
        self, policy: Any, checks: InboundChecks | None = None, signing: SigningTable | None = None
    ) -> Client:
        """A client logged in as alice on a listener offering AUTH."""
        self.users.add_user(ALICE, PASSWORD)
        factory = self.factory(
            policy,
            logins=LoginChecker(self.users, LoginThrottle(self.clock), self.clock),
            plaintext_auth="always",
            checks=checks,
            signing=signing,
        )
        client = Client(factory, PEER)
        client.take()
        client.send(EHLO + b"AUTH PLAIN " + plain(ALICE, PASSWORD) + b"\r\n")
        self.assertEqual(client.codes()[-1:], codes(replies.AUTHENTICATED))
        return client

    def stored(self) -> bytes:
        (copy,) = self.store.mailboxes["bob@ours.example"]
        return copy


class InboundCheckTests(ChecksTestCase):
    def send(
        self,
        content: bytes,
        zone: Mapping[tuple[int, str], Sequence[Any] | Exception] = SENDER_ZONE,
        envelope: bytes = MAIL_FROM_CLIENT,
        **policy: bool,
    ) -> list[tuple[int, str | None, str]]:
        client = Client(self.checked_factory(FakeDNS(zone), **policy), PEER)
        client.take()
        client.send(EHLO + envelope + b"DATA\r\n" + message(content))
        return client.replies()[3:]

    def test_authenticated_mail_gets_its_results_on_top(self) -> None:
        """Mail whose SPF passes and aligns with From passes DMARC; the stored copy carries
        our Authentication-Results field after Return-Path and Delivered-To, above Received."""
        self.assertEqual(
            [(code, enhanced) for code, enhanced, _ in self.send(FROM_CLIENT)],
            codes(replies.START_DATA, replies.MESSAGE_ACCEPTED),
        )
        stored = self.stored()
        self.assertTrue(stored.startswith(b"Return-Path: <alice@client.example>\r\nDelivered-To:"))
        start = stored.index(b"Authentication-Results:")
        self.assertLess(start, stored.index(b"Received:"))
        field = stored[start : stored.index(b"Received:")]
        self.assertEqual(
            field,
            b"Authentication-Results: mx.ours.example;\r\n"
            b"\tspf=pass (192.0.2.1 is permitted by ip4:192.0.2.1)"
            b" smtp.mailfrom=alice@client.example;\r\n"
            b"\tdkim=none;\r\n"
            b"\tdmarc=pass (p=reject dis=none) header.from=client.example\r\n",
        )
        (checked,) = self.events_of("checked")
        self.assertEqual(checked["results"], "spf=pass dkim=none dmarc=pass")

    def test_forged_from_of_a_reject_domain_is_refused(self) -> None:
        """From a p=reject domain, with neither SPF nor DKIM aligned: 550 5.7.1 at the end
        of the data, nothing stored, the refusal logged."""
        self.assertEqual(
            [(code, enhanced) for code, enhanced, _ in self.send(FROM_BANK)],
            codes(replies.START_DATA, replies.DMARC_REJECTED),
        )
        self.assertEqual(self.store.mailboxes, {})
        self.assertEqual(self.spool_files(), [])
        (rejected,) = self.events_of("rejected")
        self.assertEqual((rejected["code"], rejected["enhanced"]), (550, "5.7.1"))

    def test_dmarc_reject_can_be_turned_off(self) -> None:
        """With dmarc_reject off the same message is accepted, its failure recorded."""
        self.send(FROM_BANK, dmarc_reject=False)
        self.assertIn(b"dmarc=fail (p=reject dis=reject) header.from=bank.example", self.stored())

    def test_spf_fail_refused_only_when_asked(self) -> None:
        """An SPF fail is recorded by default and refused with spf_reject."""
        envelope = b"MAIL FROM:<ceo@bank.example>\r\nRCPT TO:<bob@ours.example>\r\n"
        content = b"From: someone@elsewhere.example\r\n\r\nx\r\n"
        self.send(content, envelope=envelope)
        self.assertIn(b"spf=fail", self.stored())
        result = self.send(content, envelope=envelope, spf_reject=True)
        self.assertEqual([(c, e) for c, e, _ in result][-1:], codes(replies.SPF_REJECTED))

    def test_dns_failure_accepts_with_temperror_or_defers(self) -> None:
        """A DNS failure never refuses for good: temperror is recorded, or with
        defer_on_dns_failure the message gets 451 4.4.3 and is not stored."""
        zone = dict(SENDER_ZONE)
        zone[(dns.TXT, "_dmarc.client.example")] = LookupFailed("SERVFAIL")
        zone[(dns.TXT, "client.example")] = LookupFailed("timeout")
        self.send(FROM_CLIENT, zone)
        stored = self.stored()
        self.assertIn(b"spf=temperror", stored)
        self.assertIn(b"dmarc=temperror", stored)
        self.store.mailboxes.clear()
        result = self.send(FROM_CLIENT, zone, defer_on_dns_failure=True)
        self.assertEqual([(c, e) for c, e, _ in result][-1:], codes(replies.CHECKS_DEFERRED))
        self.assertEqual(self.store.mailboxes, {})

    def test_forged_results_in_our_name_are_removed(self) -> None:
        """A sender's Authentication-Results field with our authserv-id is dropped; another
        server's is kept (RFC 8601 §5)."""
        content = (
            b"Authentication-Results: MX.ours.example; dmarc=pass header.from=bank.example\r\n"
            b"Authentication-Results: relay.client.example; spf=pass\r\n" + FROM_CLIENT
        )
        self.send(content)
        stored = self.stored()
        self.assertNotIn(b"header.from=bank.example", stored)
        self.assertIn(b"Authentication-Results: relay.client.example; spf=pass\r\n", stored)
        self.assertEqual(stored.count(b"Authentication-Results: mx.ours.example;"), 1)

    def test_dkim_signature_aligns_when_spf_does_not(self) -> None:
        """A message signed for its From domain passes DMARC on DKIM even from a client that
        SPF does not list."""
        signature = dkim.sign(
            FROM_BANK,
            b"sel",
            b"bank.example",
            pkcs1_pem(KEY),
            canonicalize=(b"relaxed", b"relaxed"),
        )
        zone = dict(SENDER_ZONE)
        zone[(dns.TXT, "sel._domainkey.bank.example")] = txt(KEY.dns_record())
        envelope = b"MAIL FROM:<ceo@bank.example>\r\nRCPT TO:<bob@ours.example>\r\n"
        result = self.send(signature + FROM_BANK, zone, envelope=envelope)
        self.assertEqual([(c, e) for c, e, _ in result][-1:], codes(replies.MESSAGE_ACCEPTED))
        stored = self.stored()
        self.assertIn(b"spf=fail", stored)
        self.assertIn(b"dkim=pass header.d=bank.example header.s=sel header.b=", stored)
        self.assertIn(b"dmarc=pass (p=reject dis=none)", stored)

    def test_authenticated_users_mail_is_not_checked(self) -> None:
        """Mail from a logged-in user is not checked (it is ours), but forged results in our
        name are still removed."""
        checks = InboundChecks(
            FakeDNS({}),  # type: ignore[arg-type]
            CheckPolicy(authserv_id=OURS),
            self.clock,
        )
        client = self.logged_in(replace(POLICY, auth=True), checks=checks)
        forged = b"Authentication-Results: mx.ours.example; dmarc=pass\r\n"
        client.send(
            b"MAIL FROM:<alice@ours.example>\r\nRCPT TO:<bob@ours.example>\r\nDATA\r\n"
            + message(forged + b"From: alice@ours.example\r\n\r\nhi\r\n")
        )
        self.assertEqual(client.codes()[-1:], codes(replies.MESSAGE_ACCEPTED))
        self.assertNotIn(b"Authentication-Results", self.stored())
        self.assertEqual(self.events_of("checked"), [])


class SigningTests(ChecksTestCase):
    def test_users_mail_is_signed_for_its_from_domain(self) -> None:
        """A logged-in user's message whose From is in a domain with a key gets a signature
        that dkimpy verifies on the stored copy (after its local-only headers)."""
        signing = SigningTable([SigningIdentity("ours.example", "s1", KEY)])
        client = self.logged_in(SUBMISSION, signing=signing)
        body = b"From: Alice <alice@ours.example>\r\nSubject: signed\r\n\r\n" + b"line\r\n" * 99
        client.send(
            b"MAIL FROM:<alice@ours.example>\r\nRCPT TO:<bob@ours.example>\r\nDATA\r\n"
            + message(body)
        )
        self.assertEqual(client.codes()[-1:], codes(replies.MESSAGE_ACCEPTED))
        stored = self.stored()
        relayed = stored[stored.index(b"DKIM-Signature:") :]
        records = {b"s1._domainkey.ours.example.": KEY.dns_record().encode()}
        self.assertTrue(dkim.verify(relayed, dnsfunc=lambda name, timeout=5: records[name]))
        self.assertIn(b"d=ours.example", relayed)

    def test_other_domains_are_not_signed(self) -> None:
        """Without a key for the From domain the message goes out unsigned."""
        table = SigningTable([SigningIdentity("ours.example", "s1", KEY)])
        signer = table.signer()
        signer.feed(b"From: someone@elsewhere.example\r\n\r\nx\r\n")
        self.assertEqual(signer.signature_fields(now=0), b"")


class HeldLookups(FakeDNS):
    """TXT look-ups of ``held`` wait for the test to answer them."""

    def __init__(self, zone: Mapping[tuple[int, str], Sequence[Any] | Exception], held: str):
        super().__init__(zone)
        self.held = held
        self.waiting: list[Deferred[list[Any]]] = []

    async def records(self, kind: int, name: str) -> list[Any]:
        if name == self.held:
            waiting: Deferred[list[Any]] = Deferred()
            self.waiting.append(waiting)
            return await waiting
        return await super().records(kind, name)


class CheckedDeliveryTests(ChecksTestCase):
    def client(self, dns_fake: FakeDNS) -> Client:
        client = Client(self.checked_factory(dns_fake), PEER)
        client.take()
        return client

    def test_client_gone_while_checks_wait_keeps_no_copy(self) -> None:
        """A client that hangs up while the DMARC look-up is pending never got its 250: the
        message is dropped, not stored (it will be sent again), and the spool is empty."""
        dns_fake = HeldLookups(SENDER_ZONE, "_dmarc.client.example")
        client = self.client(dns_fake)
        client.send(EHLO + MAIL_FROM_CLIENT + b"DATA\r\n" + message(FROM_CLIENT))
        self.assertEqual(len(dns_fake.waiting), 1)
        client.lose()
        dns_fake.waiting[0].callback(txt("v=DMARC1; p=none"))
        self.assertEqual(self.store.mailboxes, {})
        self.assertEqual(self.spool_files(), [])

    def test_write_failure_at_the_end_is_answered_452(self) -> None:
        """A header-only message whose last field the filter held back to the end: if that
        write fails (a full disk), the reply is 452 and nothing is stored."""
        original = Spool.write

        def failing(spool: Spool, data: bytes) -> None:
            if data.startswith(b"Authentication-Results: other.example"):
                raise OSError(errno.ENOSPC, "No space left on device")
            original(spool, data)

        self.patch(Spool, "write", failing)
        client = self.client(FakeDNS(SENDER_ZONE))
        content = b"From: alice@client.example\r\nAuthentication-Results: other.example; none\r\n"
        client.send(EHLO + MAIL_FROM_CLIENT + b"DATA\r\n" + message(content))
        self.assertEqual(client.codes()[-1:], codes(replies.INSUFFICIENT_STORAGE))
        self.assertEqual(self.store.mailboxes, {})
        self.assertEqual(self.spool_files(), [])

    def test_client_without_ip_address_is_not_checked(self) -> None:
        """A client on a UNIX socket has no address for SPF: its mail is taken unchecked."""
        client = Client(self.checked_factory(FakeDNS({})), UNIXAddress(b"/run/mail.sock"))  # type: ignore[arg-type]
        client.take()
        client.send(EHLO + MAIL_FROM_CLIENT + b"DATA\r\n" + message(FROM_CLIENT))
        self.assertEqual(client.codes()[-1:], codes(replies.MESSAGE_ACCEPTED))
        self.assertNotIn(b"Authentication-Results", self.stored())
