"""The queue runner: hands due messages to the courier, records the outcome, notifies senders.

It knows nothing about SMTP. Every queued record lives in memory (a few hundred bytes each)
with its message on disk; a timer on the injected clock wakes the runner when the earliest
pending recipient is due. Due recipients are grouped by destination domain, and each domain
gets one courier call at a time (one connection, several messages), with at most
``max_domains`` calls at once: a bounded number of connections per destination and overall.

After each attempt the record is saved atomically before anything else happens, so a crash
loses at most the knowledge of that attempt: a delivery may then be repeated (at worst a
duplicate), never dropped. Records finished (no recipient pending) are removed.

New messages arrive from the mail store (:meth:`QueueRunner.add`), and from other processes
through the queue directory, which is looked at every ``poll_interval`` seconds; so are the
commands of ``mailserver queue`` (:mod:`mailserver.queue.control`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailserver import events
from mailserver.interfaces import ICourier, RecipientResult
from mailserver.queue import control
from mailserver.queue.record import QueuedRecipient, QueueRecord
from mailserver.queue.schedule import (
    Notice,
    Outcome,
    RetryPolicy,
    apply_results,
    bounce_by_administrator,
    check_delay,
)
from mailserver.queue.store import LoadResult, QueueStore

log = Logger()


class Notifier(Protocol):
    """Sends delivery status notifications (:class:`mailserver.queue.notify.Notifier`)."""

    def send(self, record: QueueRecord, notice: Notice) -> Deferred[None]: ...


class QueueRunner(Service):
    def __init__(
        self,
        store: QueueStore,
        courier: ICourier,
        notifier: Notifier,
        clock: IReactorTime,
        policy: RetryPolicy | None = None,
        max_domains: int = 20,
        poll_interval: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._courier = courier
        self._notifier = notifier
        self._clock = clock
        self._policy = policy or RetryPolicy()
        self._max_domains = max_domains
        self._rng = rng or random.Random()
        self.records: dict[str, QueueRecord] = {}
        self._busy_domains: set[str] = set()
        self._in_flight: dict[str, set[str]] = {}  # record id -> domains being attempted
        self._saving: dict[str, Deferred[None]] = {}  # record id -> its save in progress
        self._waiters: dict[str, list[Deferred[None]]] = {}  # waiting for the next save
        self._resave: set[str] = set()
        self._timer: IDelayedCall | None = None
        self._poll = LoopingCall(self._look_at_disk)
        self._poll.clock = clock
        self._poll_interval = poll_interval
        self._directory_seen: int | None = None
        self._loaded = False
        self._scheduling = False
        self._schedule_again = False

    # -- service ------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._store.load().addCallbacks(self._loaded_from_disk, self._load_failed)

    def stopService(self) -> Deferred[object] | None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._poll.running:
            self._poll.stop()
        # Saves in progress finish: the records on disk stay true to what happened.
        pending = list(self._saving.values())
        return DeferredList(pending) if pending else None  # type: ignore[return-value]

    def _loaded_from_disk(self, result: LoadResult) -> None:
        for problem in result.problems:
            log.error("{problem}", problem=problem)
        for record in result.records:
            self.records[record.id] = record
        log.info("outbound queue: {count} messages", count=len(result.records))
        self._loaded = True
        self._directory_seen = self._directory_mtime()
        if self.running:
            self._poll.start(self._poll_interval, now=False)
            self._schedule()

    def _load_failed(self, failure: Failure) -> None:
        log.failure("the outbound queue could not be read", failure)

    # -- new messages and commands -------------------------------------------------------

    def add(self, record: QueueRecord) -> None:
        """A message was queued durably (by this process): try it at once."""
        self.records.setdefault(record.id, record)
        if self._loaded:
            self._schedule()

    def _look_at_disk(self) -> None:
        for command in control.take_commands(self._store):
            self._apply(command)
        mtime = self._directory_mtime()
        if mtime != self._directory_seen:
            self._directory_seen = mtime
            self._pick_up_new()

    def _pick_up_new(self) -> None:
        """Messages queued by other processes (the SMTP worker processes)."""

        def found(records: list[QueueRecord]) -> None:
            for record in records:
                self.records.setdefault(record.id, record)
            self._schedule()

        self._store.read_new(frozenset(self.records)).addCallbacks(
            found, self._log_failure, errbackArgs=("reading new records in", "the queue")
        )

    def _directory_mtime(self) -> int | None:
        try:
            return os.stat(self._store.directory).st_mtime_ns
        except OSError:
            return None

    def _apply(self, command: control.Command) -> None:
        now = self._clock.seconds()
        targets = [command.id] if command.id else list(self.records)
        for id in targets:
            record = self.records.get(id)
            if record is None or (command.action != "retry" and id in self._in_flight):
                log.warn(
                    "queue {action} {id}: no such message, or being delivered",
                    action=command.action,
                    id=id,
                )
                continue
            if command.action == "retry":
                for recipient in record.pending:
                    recipient.next_attempt = now
                log.info("queue: retrying {id} now", id=id)
            elif command.action == "delete":
                del self.records[id]
                self._store.remove(id).addErrback(self._log_failure, "removing", id)
                log.info("queue: deleted {id} without notice", id=id)
                continue
            elif command.action == "bounce":
                self._finish_attempt(record, bounce_by_administrator(record, now))
                log.info("queue: returned {id} to its sender", id=id)
                continue
            self._persist(record)
        self._schedule()

    # -- scheduling -----------------------------------------------------------------------

    def _schedule(self) -> None:
        if not self.running:
            return
        if self._scheduling:
            # Called back from inside the loop below (a courier that answered at once):
            # the loop goes round again instead, with what it has just learnt.
            self._schedule_again = True
            return
        self._scheduling = True
        try:
            self._schedule_again = True
            while self._schedule_again:
                self._schedule_again = False
                self._start_due_attempts()
        finally:
            self._scheduling = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        now = self._clock.seconds()
        earliest = self._earliest()
        if earliest is not None:
            self._timer = self._clock.callLater(max(earliest - now, 0.0), self._schedule)

    def _start_due_attempts(self) -> None:
        now = self._clock.seconds()
        self._check_delays(now)
        for domain, items in self._due(now).items():
            if len(self._busy_domains) >= self._max_domains or self._schedule_again:
                break
            self._attempt(domain, items)

    def _due(self, now: float) -> dict[str, list[tuple[QueueRecord, list[QueuedRecipient]]]]:
        due: dict[str, list[tuple[QueueRecord, list[QueuedRecipient]]]] = {}
        for record in self.records.values():
            busy = self._in_flight.get(record.id, set())
            by_domain: dict[str, list[QueuedRecipient]] = {}
            for recipient in record.pending:
                domain = recipient.domain
                if recipient.next_attempt <= now and domain not in busy:
                    by_domain.setdefault(domain, []).append(recipient)
            for domain, recipients in by_domain.items():
                if domain not in self._busy_domains:
                    due.setdefault(domain, []).append((record, recipients))
        return due

    def _earliest(self) -> float | None:
        times = [
            recipient.next_attempt
            for record in self.records.values()
            for recipient in record.pending
            if recipient.domain not in self._in_flight.get(record.id, set())
            and recipient.domain not in self._busy_domains
        ]
        return min(times, default=None)

    def _check_delays(self, now: float) -> None:
        for record in list(self.records.values()):
            if record.delay_notified or record.id in self._in_flight:
                continue
            outcome = Outcome()
            check_delay(record, now, self._policy, outcome)
            if outcome.notices:
                self._finish_attempt(record, outcome)

    # -- attempts -------------------------------------------------------------------------

    def _attempt(self, domain: str, items: list[tuple[QueueRecord, list[QueuedRecipient]]]) -> None:
        self._busy_domains.add(domain)
        for record, _ in items:
            self._in_flight.setdefault(record.id, set()).add(domain)
        messages = [
            record.outbound_message(self._store.message_path(record.id), recipients)
            for record, recipients in items
        ]
        done = self._courier.deliver(domain, messages)
        done.addCallback(self._attempted, domain, items)
        done.addErrback(self._log_failure, "delivering to", domain)
        done.addBoth(self._domain_free, domain, items)

    def _attempted(
        self,
        results: Sequence[Sequence[RecipientResult]],
        domain: str,
        items: list[tuple[QueueRecord, list[QueuedRecipient]]],
    ) -> None:
        now = self._clock.seconds()
        for (record, recipients), message_results in zip(items, results, strict=True):
            outcome = apply_results(
                record, recipients, message_results, now, self._policy, self._rng
            )
            for result in message_results:
                events.outbound_attempt(
                    id=record.id,
                    recipient=result.recipient,
                    outcome=result.outcome.value,
                    remote=result.remote_host,
                    reply=str(result.reply),
                )
            self._in_flight.get(record.id, set()).discard(domain)
            self._finish_attempt(record, outcome)

    def _domain_free(
        self, _: object, domain: str, items: list[tuple[QueueRecord, list[QueuedRecipient]]]
    ) -> None:
        self._busy_domains.discard(domain)
        for record, _recipients in items:
            domains = self._in_flight.get(record.id)
            if domains is not None:
                domains.discard(domain)
                if not domains:
                    del self._in_flight[record.id]
        self._schedule()

    def _finish_attempt(self, record: QueueRecord, outcome: Outcome) -> None:
        """Save what happened, then send the notices; a finished record is removed once no
        other domain of it is still being attempted."""
        saved = self._persist(record)
        for notice in outcome.notices.values():
            saved.addCallback(self._notify, record, notice)
        if record.done and not self._in_flight.get(record.id):
            self.records.pop(record.id, None)
            saved.addCallback(lambda _: self._store.remove(record.id))
            events.outbound_done(id=record.id, recipients=len(record.recipients))
        saved.addErrback(self._log_failure, "recording the attempt on", record.id)

    def _notify(self, _: object, record: QueueRecord, notice: Notice) -> Deferred[None]:
        def failed(failure: Failure) -> None:
            self._log_failure(failure, f"sending the {notice.action.value} notice for", record.id)

        return self._notifier.send(record, notice).addErrback(failed)

    def _persist(self, record: QueueRecord) -> Deferred[None]:
        """Save the record; fires once a save that includes its present state is durable.
        Saves of one record never overlap, so the last state always wins on disk."""
        waiter: Deferred[None] = Deferred()
        self._waiters.setdefault(record.id, []).append(waiter)
        if record.id in self._saving:
            self._resave.add(record.id)
        else:
            self._save_now(record)
        return waiter

    def _save_now(self, record: QueueRecord) -> None:
        waiters = self._waiters.pop(record.id, [])
        if record.done and not self._in_flight.get(record.id):
            saving: Deferred[None] = Deferred()
            saving.callback(None)  # about to be removed: nothing to save
        else:
            saving = self._store.save(record)
        self._saving[record.id] = saving

        def finished(result: object) -> None:
            del self._saving[record.id]
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(None)
            if record.id in self._resave:
                self._resave.discard(record.id)
                self._save_now(record)

        saving.addBoth(finished)

    def _log_failure(self, failure: Failure, doing: str, what: str) -> None:
        log.failure("outbound queue: {doing} {what} failed", failure, doing=doing, what=what)
