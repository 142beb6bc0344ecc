"""Tests for mailserver.queue.runner: scheduling on a fake clock with a scripted courier."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from mailserver.dsn import Action
from mailserver.interfaces import (
    DeliveryOutcome,
    ICourier,
    OutboundMessage,
    OutboundRecipient,
    RecipientResult,
    ReplyInfo,
)
from mailserver.queue import control
from mailserver.queue.record import QueueRecord, RecipientState
from mailserver.queue.runner import RETRY_LATER, QueueRunner
from mailserver.queue.schedule import Notice, RetryPolicy
from mailserver.queue.store import QueueStore
from tests.immediate import ImmediateReactor, ImmediateThreadPool
from tests.queue_helpers import files, queue_message

POLICY = RetryPolicy(initial=60, maximum=600, delay_notice=1000, lifetime=5000, jitter=0)
LATER = ReplyInfo(451, "4.7.1", "Greylisted")
OK = ReplyInfo(250, "2.0.0", "OK")
NEVER = ReplyInfo(550, "5.1.1", "No such user")


@implementer(ICourier)
class ScriptedCourier:
    """Answers each recipient with the next outcome scripted for its address (DELIVERED when
    nothing is scripted), at once or when ``hold`` is set, on release()."""

    def __init__(self) -> None:
        self.script: dict[str, list[tuple[DeliveryOutcome, ReplyInfo]]] = {}
        self.calls: list[tuple[str, list[list[str]]]] = []
        self.hold = False
        self.held: list[Deferred[list[list[RecipientResult]]]] = []

    def deliver(
        self, domain: str, messages: Sequence[OutboundMessage]
    ) -> Deferred[list[list[RecipientResult]]]:
        self.calls.append((domain, [[r.address for r in m.recipients] for m in messages]))
        results = [
            [self._answer(recipient.address) for recipient in message.recipients]
            for message in messages
        ]
        if self.hold:
            waiting: Deferred[list[list[RecipientResult]]] = Deferred()
            waiting.result_to_give = results  # type: ignore[attr-defined]
            self.held.append(waiting)
            return waiting
        return succeed(results)

    def release(self) -> None:
        for waiting in self.held:
            waiting.callback(waiting.result_to_give)  # type: ignore[attr-defined]
        self.held = []

    def _answer(self, address: str) -> RecipientResult:
        script = self.script.get(address)
        outcome, reply = script.pop(0) if script else (DeliveryOutcome.DELIVERED, OK)
        return RecipientResult(address, outcome, reply, "mx.example")


class RecordingNotifier:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Action, list[str]]] = []

    def send(self, record: QueueRecord, notice: Notice) -> Deferred[None]:
        self.sent.append((record.id, notice.action, [r.address for r in notice.recipients]))
        return succeed(None)


class Harness:
    def __init__(self, tmp_path: Path, per_domain: int = 1, batch: int = 50) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(1000)
        self.store = QueueStore(tmp_path, ImmediateReactor(), ImmediateThreadPool())  # type: ignore[arg-type]
        self.courier = ScriptedCourier()
        self.notifier = RecordingNotifier()
        self.runner = QueueRunner(
            self.store,
            self.courier,
            self.notifier,
            self.clock,
            POLICY,
            max_connections=2,
            per_domain=per_domain,
            batch=batch,
        )

    def queue(self, id: str, *recipients: str) -> QueueRecord:
        return queue_message(self.store, id, list(recipients), created=self.clock.seconds())

    def start(self) -> None:
        self.runner.startService()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)


def test_queue_loaded_at_start_is_delivered_and_removed(tmp_path: Path) -> None:
    """Messages on disk at start-up are delivered at once, grouped by domain, and their files
    removed; a message for two domains gets one call per domain."""
    harness = Harness(tmp_path)
    harness.queue("A", "x@one.example", "y@two.example")
    harness.queue("B", "z@one.example")
    harness.start()
    assert sorted(harness.courier.calls) == [
        ("one.example", [["x@one.example"], ["z@one.example"]]),
        ("two.example", [["y@two.example"]]),
    ]
    assert files(harness.store.directory) == []
    assert harness.runner.records == {}
    assert harness.notifier.sent == []  # successes are reported only when asked for


def test_greylisting_retried_after_backoff_and_delivered_once(tmp_path: Path) -> None:
    """A 4xx is retried after the backoff, not before; once delivered, never again."""
    harness = Harness(tmp_path)
    harness.courier.script["x@e.example"] = [(DeliveryOutcome.TRANSIENT, LATER)]
    harness.queue("A", "x@e.example")
    harness.start()
    assert len(harness.courier.calls) == 1
    saved = harness.store.read_blocking("A").recipients[0]
    assert (saved.attempts, saved.last_reply, saved.next_attempt) == (1, LATER, 1060.0)
    harness.advance(59)
    assert len(harness.courier.calls) == 1
    harness.advance(1)
    assert len(harness.courier.calls) == 2
    harness.advance(10_000)
    assert len(harness.courier.calls) == 2
    assert files(harness.store.directory) == []


def test_permanent_failure_bounces_at_once(tmp_path: Path) -> None:
    """A 5xx fails the recipient at once with a failure notice; the others go on."""
    harness = Harness(tmp_path)
    harness.courier.script["x@e.example"] = [(DeliveryOutcome.PERMANENT, NEVER)]
    harness.queue("A", "x@e.example", "y@e.example")
    harness.start()
    assert ("A", Action.FAILED, ["x@e.example"]) in harness.notifier.sent
    assert files(harness.store.directory) == []


def test_unreachable_until_lifetime_gives_delay_notice_then_bounce(tmp_path: Path) -> None:
    """Always failing for now: one delay notice after delay_notice, a bounce at the end of
    the lifetime, and the message leaves the queue."""
    harness = Harness(tmp_path)
    harness.courier.script["x@e.example"] = [(DeliveryOutcome.TRANSIENT, LATER)] * 100
    harness.queue("A", "x@e.example")
    harness.start()
    for _ in range(100):
        harness.advance(60)
    actions = [action for _, action, _ in harness.notifier.sent]
    assert actions == [Action.DELAYED, Action.FAILED]
    assert harness.runner.records == {}
    assert files(harness.store.directory) == []


def test_one_attempt_per_domain_at_a_time(tmp_path: Path) -> None:
    """While a domain is being delivered to, its other messages wait for that call to end, and
    no more than max_domains calls run at once."""
    harness = Harness(tmp_path)
    harness.courier.hold = True
    harness.queue("A", "x@one.example")
    harness.queue("B", "x@two.example")
    harness.queue("C", "x@three.example")
    harness.start()
    assert len(harness.courier.calls) == 2
    harness.runner.add(harness.queue("D", "y@one.example"))
    assert len(harness.courier.calls) == 2
    harness.courier.release()
    assert len(harness.courier.calls) == 4
    harness.courier.release()
    assert files(harness.store.directory) == []


def test_new_message_from_this_process_goes_at_once(tmp_path: Path) -> None:
    """A message queued while running is tried without waiting for the poll."""
    harness = Harness(tmp_path)
    harness.start()
    harness.runner.add(harness.queue("A", "x@e.example"))
    assert harness.courier.calls == [("e.example", [["x@e.example"]])]


def test_messages_queued_by_other_processes_are_found(tmp_path: Path) -> None:
    """A record another process wrote into the queue is picked up at the next poll."""
    harness = Harness(tmp_path)
    harness.start()
    harness.queue("A", "x@e.example")
    harness.advance(1)
    assert harness.courier.calls == [("e.example", [["x@e.example"]])]


def test_admin_commands(tmp_path: Path) -> None:
    """retry tries at once, bounce returns to the sender, delete removes without notice."""
    harness = Harness(tmp_path)
    for address in ("a@e.example", "b@f.example", "c@g.example"):
        harness.courier.script[address] = [(DeliveryOutcome.TRANSIENT, LATER)] * 5
    harness.queue("A", "a@e.example")
    harness.queue("B", "b@f.example")
    harness.queue("C", "c@g.example")
    harness.start()
    assert len(harness.courier.calls) == 3
    control.submit(harness.store, control.Command("retry", "A"))
    control.submit(harness.store, control.Command("bounce", "B"))
    control.submit(harness.store, control.Command("delete", "C"))
    harness.advance(1)
    assert harness.courier.calls[-1] == ("e.example", [["a@e.example"]])
    assert ("B", Action.FAILED, ["b@f.example"]) in harness.notifier.sent
    assert not any(id == "C" for id, _, _ in harness.notifier.sent)
    assert sorted(harness.runner.records) == ["A"]
    assert files(harness.store.directory) == ["A.json", "A.msg"]


def test_restart_keeps_what_was_learnt(tmp_path: Path) -> None:
    """After a restart, attempts and the next retry time come from the saved record."""
    harness = Harness(tmp_path)
    harness.courier.script["x@e.example"] = [(DeliveryOutcome.TRANSIENT, LATER)]
    harness.queue("A", "x@e.example")
    harness.start()
    harness.runner.stopService()
    again = Harness(tmp_path)
    again.clock.advance(10)
    again.start()
    assert again.courier.calls == []
    assert again.runner.records["A"].recipients[0].attempts == 1
    again.advance(50)
    assert again.courier.calls == [("e.example", [["x@e.example"]])]
    assert again.runner.records == {}


def test_busy_domain_gets_several_connections_each_with_a_batch(tmp_path: Path) -> None:
    """Many messages for one domain are spread over up to per_domain connections, each
    carrying at most a batch of messages; the rest wait for a connection to finish."""
    harness = Harness(tmp_path, per_domain=2, batch=2)
    harness.courier.hold = True
    for number in range(5):
        harness.queue(f"M{number}", f"x{number}@e.example")
    harness.start()
    assert [len(messages) for _, messages in harness.courier.calls] == [2, 2]
    harness.courier.release()
    assert [len(messages) for _, messages in harness.courier.calls] == [2, 2, 1]
    harness.courier.release()
    assert files(harness.store.directory) == []


def test_large_queue_costs_little_per_event(tmp_path: Path) -> None:
    """Many waiting messages: adding and delivering more does not walk them all (scheduling
    works from a heap), so it stays quick."""
    import time

    harness = Harness(tmp_path)
    for number in range(500):
        address = f"x{number}@e{number}.example"
        harness.courier.script[address] = [(DeliveryOutcome.TRANSIENT, LATER)]
        harness.queue(f"M{number}", address)
    harness.start()
    harness.advance(30)  # everything tried once, now waiting for its retry
    calls = len(harness.courier.calls)
    assert calls == 500
    start = time.perf_counter()
    for number in range(200):
        harness.runner.add(harness.queue(f"N{number}", f"y{number}@new.example"))
    assert time.perf_counter() - start < 5
    assert len(harness.courier.calls) > calls


def test_finished_message_is_not_read_back_from_disk(tmp_path: Path) -> None:
    """A message delivered while its files are still being removed is not taken for a new
    one by the look at the queue directory, and never delivered twice."""
    harness = Harness(tmp_path)
    harness.start()
    removals: list[Deferred[None]] = []

    def slow_remove(id: str) -> Deferred[None]:
        waiting: Deferred[None] = Deferred()
        removals.append(waiting)
        waiting.addCallback(lambda _: harness.store.remove_blocking(id))
        return waiting

    harness.store.remove = slow_remove  # type: ignore[method-assign]
    harness.runner.add(harness.queue("A", "x@e.example"))
    assert len(harness.courier.calls) == 1
    harness.advance(1)  # the poll sees the directory change while A's files are still there
    harness.advance(1)
    assert len(harness.courier.calls) == 1
    removals[0].callback(None)
    harness.advance(5)
    assert len(harness.courier.calls) == 1
    assert files(harness.store.directory) == []


class FailingNotifier(RecordingNotifier):
    """Fails the first ``failures`` notices, then records like its parent."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def send(self, record: QueueRecord, notice: Notice) -> Deferred[None]:
        if self.failures:
            self.failures -= 1
            return fail(OSError("disk full"))
        return super().send(record, notice)


def test_a_notice_that_fails_is_kept_and_sent_later(tmp_path: Path) -> None:
    """A bounce that cannot be handed over stays owed in the record on disk, which stays in
    the queue; it is tried again a minute later and only then is the record removed."""
    harness = Harness(tmp_path)
    harness.notifier = FailingNotifier(failures=1)
    harness.runner._notifier = harness.notifier  # type: ignore[attr-defined]
    harness.courier.script["x@e.example"] = [(DeliveryOutcome.PERMANENT, NEVER)]
    harness.queue("A", "x@e.example")
    harness.start()
    assert harness.notifier.sent == []
    assert harness.store.read_blocking("A").owed == [("failed", ("x@e.example",))]
    harness.advance(RETRY_LATER)
    assert harness.notifier.sent == [("A", Action.FAILED, ["x@e.example"])]
    assert files(harness.store.directory) == []


def test_owed_notices_are_sent_after_a_restart(tmp_path: Path) -> None:
    """Notices a crash kept from going out are sent when the queue is read back."""
    harness = Harness(tmp_path)
    record = harness.queue("A", "x@e.example")
    record.recipients[0].state = RecipientState.FAILED
    record.owed.append(("failed", ("x@e.example",)))
    harness.store.save_blocking(record)
    harness.start()
    assert harness.courier.calls == []
    assert harness.notifier.sent == [("A", Action.FAILED, ["x@e.example"])]
    assert files(harness.store.directory) == []


@implementer(ICourier)
class BrokenCourier:
    def __init__(self) -> None:
        self.calls = 0

    def deliver(
        self, domain: str, messages: Sequence[OutboundMessage]
    ) -> Deferred[list[list[RecipientResult]]]:
        self.calls += 1
        return fail(RuntimeError("a bug"))


def test_a_failing_courier_backs_off(tmp_path: Path) -> None:
    """A courier that fails (a bug) counts as a temporary failure: the message waits for its
    retry instead of being tried again at once, over and over."""
    harness = Harness(tmp_path)
    courier = BrokenCourier()
    harness.runner._courier = courier  # type: ignore[attr-defined]
    harness.queue("A", "x@e.example")
    harness.start()
    harness.advance(0)
    harness.advance(0)
    assert courier.calls == 1
    harness.advance(60)
    assert courier.calls == 2
    saved = harness.store.read_blocking("A").recipients[0]
    assert saved.last_reply is not None and saved.last_reply.code == 451


def test_delete_of_a_message_in_flight_waits_for_its_attempt(tmp_path: Path) -> None:
    """``queue delete`` of a message being delivered is carried out once the attempt ends,
    not dropped."""
    harness = Harness(tmp_path)
    harness.courier.hold = True
    harness.courier.script["x@e.example"] = [(DeliveryOutcome.TRANSIENT, LATER)]
    harness.queue("A", "x@e.example")
    harness.start()
    control.submit(harness.store, control.Command("delete", "A"))
    harness.advance(1)
    assert "A" in harness.runner.records
    harness.courier.release()
    harness.advance(1)
    assert harness.runner.records == {}
    assert files(harness.store.directory) == []
    assert harness.notifier.sent == []


def test_delivered_notice_for_a_local_recipient(tmp_path: Path) -> None:
    """A record that only owes a "delivered" notice (local delivery with NOTIFY=SUCCESS) is
    never handed to the courier: the notice goes out and the record leaves the queue."""
    harness = Harness(tmp_path)
    harness.start()
    record = QueueRecord.for_transaction(
        id="B",
        sender="alice@ours.example",
        recipients=[],
        created=harness.clock.seconds(),
        size=30,
        delivered=[OutboundRecipient("bob@ours.example", frozenset({"SUCCESS"}))],
    )
    harness.store.message_path("B").write_bytes(b"From: alice@ours.example\r\n\r\nHi\r\n")
    harness.store.save_blocking(record)
    harness.runner.add(record)
    assert harness.courier.calls == []
    assert ("B", Action.DELIVERED, ["bob@ours.example"]) in harness.notifier.sent
    assert "B" not in harness.runner.records


def test_delete_while_a_notice_waits_to_be_retried(tmp_path: Path) -> None:
    """Deleting a message whose notice is waiting to be tried again removes it for good: the
    waiting retry does not bring its record back."""
    harness = Harness(tmp_path)
    harness.notifier = FailingNotifier(failures=100)
    harness.runner._notifier = harness.notifier  # type: ignore[attr-defined]
    harness.courier.script["x@e.example"] = [(DeliveryOutcome.PERMANENT, NEVER)]
    harness.queue("A", "x@e.example")
    harness.start()
    control.submit(harness.store, control.Command("delete", "A"))
    harness.advance(1)
    harness.advance(RETRY_LATER * 3)
    assert files(harness.store.directory) == []
    assert harness.runner.records == {}
