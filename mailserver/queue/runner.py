"""The queue runner: hands due messages to the courier, records the outcome, notifies senders.

It knows nothing about SMTP. Every queued record lives in memory (a few hundred bytes each)
with its message on disk. Records wait in a heap ordered by when they next need attention (a
recipient due, or a delay notice due); a timer on the injected clock wakes the runner for the
earliest. A record whose recipients are due joins its domains' ready lists, and each domain
gets at most ``per_domain`` courier calls at a time (one connection each, up to ``batch``
messages over it), with at most ``max_connections`` calls overall: a bounded number of
connections per destination and overall. Nothing here walks the whole queue per event, so a
queue of ten thousand messages costs no more per delivery than a queue of ten.

After each attempt the record is saved atomically before notices go out or files are removed,
so a crash loses at most the knowledge of that attempt: a delivery may then be repeated (at
worst a duplicate), never dropped. Records finished (no recipient pending) are removed.

New messages arrive from the mail store (:meth:`QueueRunner.add`), and from other processes
through the queue directory, which is looked at every ``poll_interval`` seconds; so are the
commands of ``mailserver queue`` (:mod:`mailserver.queue.control`).
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
from collections.abc import Sequence
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailserver import events
from mailserver.dsn import Action
from mailserver.interfaces import DeliveryOutcome, ICourier, RecipientResult, ReplyInfo
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

RETRY_LATER = 60.0  # seconds before a failed save, notice or queue load is tried again
FULL_LOOK_INTERVAL = 30.0  # seconds between looks at the queue directory regardless of mtime

Batch = list[tuple[QueueRecord, list[QueuedRecipient]]]


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
        max_connections: int = 20,
        per_domain: int = 5,
        batch: int = 50,
        poll_interval: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._courier = courier
        self._notifier = notifier
        self._clock = clock
        self._policy = policy or RetryPolicy()
        self._max_connections = max_connections
        self._per_domain = per_domain
        self._batch = batch
        self._rng = rng or random.Random()
        self.records: dict[str, QueueRecord] = {}
        self._heap: list[tuple[float, int, str]] = []  # (when, tie-breaker, record id)
        self._order = itertools.count()
        self._ready: dict[str, dict[str, None]] = {}  # domain -> ids due there, in order
        self._connections: dict[str, int] = {}  # domain -> courier calls running
        self._in_flight: dict[str, set[str]] = {}  # record id -> domains being attempted
        self._saving: dict[str, Deferred[None]] = {}  # record id -> its save in progress
        self._waiters: dict[str, list[Deferred[None]]] = {}  # waiting for the next save
        self._resave: set[str] = set()
        # Finished or deleted, their files not yet removed: not to be read back as new.
        self._leaving: set[str] = set()
        self._timer: IDelayedCall | None = None
        self._poll = LoopingCall(self._look_at_disk)
        self._poll.clock = clock
        self._poll_interval = poll_interval
        self._directory_seen: int | None = None
        self._last_full_look = 0.0
        self._postponed: list[control.Command] = []  # commands for messages in flight
        self._notifying: set[str] = set()  # ids whose owed notices are being handed over
        self._retries: dict[str, IDelayedCall] = {}  # one pending "settle later" per record
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
        for retry in self._retries.values():
            if retry.active():
                retry.cancel()
        self._retries.clear()
        # Saves in progress finish: the records on disk stay true to what happened.
        pending = list(self._saving.values())
        return DeferredList(pending) if pending else None  # type: ignore[return-value]

    def _loaded_from_disk(self, result: LoadResult) -> None:
        for problem in result.problems:
            log.error("{problem}", problem=problem)
        for record in result.records:
            self.records[record.id] = record
            self._wake(record)
            if record.owed:
                self._settle(record)  # notices decided before the restart
        log.info("outbound queue: {count} messages", count=len(result.records))
        self._loaded = True
        self._directory_seen = self._directory_mtime()
        if self.running:
            self._poll.start(self._poll_interval, now=False)
            self._schedule()

    def _load_failed(self, failure: Failure) -> None:
        log.failure("the outbound queue could not be read; trying again in a minute", failure)
        if self.running:
            self._clock.callLater(RETRY_LATER, self._load_again)

    def _load_again(self) -> None:
        if self.running and not self._loaded:
            self._store.load().addCallbacks(self._loaded_from_disk, self._load_failed)

    # -- new messages and commands -------------------------------------------------------

    def add(self, record: QueueRecord) -> None:
        """A message was queued durably (by this process): try it at once."""
        if record.id not in self.records:
            self.records[record.id] = record
            self._wake(record)
            if record.owed and self._loaded:
                self._settle(record)  # "delivered" notices for local recipients
        if self._loaded:
            self._schedule()

    def _look_at_disk(self) -> None:
        commands, self._postponed = self._postponed, []
        for command in commands + control.take_commands(self._store):
            self._apply(command)
        # A directory's modification time can miss a change made within its granularity (a
        # second on some filesystems), so the directory is also read now and then regardless.
        mtime = self._directory_mtime()
        now = self._clock.seconds()
        if mtime != self._directory_seen or now - self._last_full_look >= FULL_LOOK_INTERVAL:
            self._directory_seen = mtime
            self._last_full_look = now
            self._pick_up_new()

    def _pick_up_new(self) -> None:
        """Messages queued by other processes (the SMTP worker processes)."""

        def found(records: list[QueueRecord]) -> None:
            for record in records:
                if record.id not in self.records and record.id not in self._leaving:
                    self.records[record.id] = record
                    self._wake(record)
                    if record.owed:
                        self._settle(record)
            self._schedule()

        self._store.read_new(frozenset(self.records) | self._leaving).addCallbacks(
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
            if record is None:
                log.warn("queue {action} {id}: no such message", action=command.action, id=id)
                continue
            if command.action != "retry" and id in self._in_flight:
                self._postponed.append(command)  # once the attempt under way is over
                continue
            if command.action == "retry":
                for recipient in record.pending:
                    recipient.next_attempt = now
                self._wake(record)
                self._persist(record).addErrback(self._log_failure, "saving", id)
                log.info("queue: retrying {id} now", id=id)
            elif command.action == "delete":
                del self.records[id]
                self._cancel_retry(id)
                self._resave.discard(id)
                self._remove(id)
                log.info("queue: deleted {id} without notice", id=id)
            elif command.action == "bounce":
                self._finish_attempt(record, bounce_by_administrator(record, now))
                log.info("queue: returned {id} to its sender", id=id)
        self._schedule()

    # -- scheduling -----------------------------------------------------------------------

    def _wake(self, record: QueueRecord) -> None:
        """Put ``record`` in the heap for the next time it needs attention."""
        times = [
            recipient.next_attempt
            for recipient in record.pending
            if recipient.domain not in self._in_flight.get(record.id, ())
        ]
        if not record.delay_notified and record.pending:
            times.append(record.created + self._policy.delay_notice)
        if times:
            heapq.heappush(self._heap, (min(times), next(self._order), record.id))

    def _schedule(self) -> None:
        if not self.running or not self._loaded:
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
                self._take_due()
                self._start_attempts()
        finally:
            self._scheduling = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._heap:
            delay = max(self._heap[0][0] - self._clock.seconds(), 0.0)
            self._timer = self._clock.callLater(delay, self._schedule)

    def _take_due(self) -> None:
        """Move the records whose time has come from the heap to their domains' ready lists
        (and send the delay notices that are due)."""
        now = self._clock.seconds()
        while self._heap and self._heap[0][0] <= now:
            _, _, id = heapq.heappop(self._heap)
            record = self.records.get(id)
            if record is None:
                continue  # finished or deleted since
            if id not in self._in_flight:
                outcome = Outcome(record.sender)
                check_delay(record, now, self._policy, outcome)
                if outcome.notices:
                    self._finish_attempt(record, outcome)
            busy = self._in_flight.get(id, ())
            waiting_later = False
            for recipient in record.pending:
                if recipient.domain in busy:
                    continue  # its attempt's end will wake the record again
                if recipient.next_attempt <= now:
                    self._ready.setdefault(recipient.domain, {})[id] = None
                else:
                    waiting_later = True
            if waiting_later:
                self._wake(record)

    def _start_attempts(self) -> None:
        for domain in list(self._ready):
            ids = self._ready[domain]
            while ids and self._free_connection(domain):
                batch: Batch = []
                while ids and len(batch) < self._batch:
                    id = next(iter(ids))
                    del ids[id]
                    record = self.records.get(id)
                    if record is None or domain in self._in_flight.get(id, ()):
                        continue
                    recipients = [r for r in record.pending if r.domain == domain]
                    if recipients:
                        batch.append((record, recipients))
                if batch:
                    self._attempt(domain, batch)
            if not ids:
                del self._ready[domain]

    def _free_connection(self, domain: str) -> bool:
        return (
            self._connections.get(domain, 0) < self._per_domain
            and sum(self._connections.values()) < self._max_connections
        )

    # -- attempts -------------------------------------------------------------------------

    def _attempt(self, domain: str, batch: Batch) -> None:
        self._connections[domain] = self._connections.get(domain, 0) + 1
        for record, _ in batch:
            self._in_flight.setdefault(record.id, set()).add(domain)
        messages = [
            record.outbound_message(self._store.message_path(record.id), recipients)
            for record, recipients in batch
        ]
        done = self._courier.deliver(domain, messages)

        def failed(failure: Failure) -> list[list[RecipientResult]]:
            # A bug of ours, not the destination's doing: try again later like any
            # temporary failure, so that it cannot turn into a busy loop.
            self._log_failure(failure, "delivering to", domain)
            reply = ReplyInfo(451, "4.3.0", "Local error while delivering; will try again")
            return [
                [RecipientResult(r.address, DeliveryOutcome.TRANSIENT, reply) for r in recipients]
                for _, recipients in batch
            ]

        done.addErrback(failed)
        done.addCallback(self._attempted, domain, batch)
        done.addErrback(self._log_failure, "recording the results from", domain)
        done.addBoth(self._connection_free, domain, batch)

    def _attempted(
        self, results: Sequence[Sequence[RecipientResult]], domain: str, batch: Batch
    ) -> None:
        now = self._clock.seconds()
        for (record, recipients), message_results in zip(batch, results, strict=True):
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
            self._release(record, domain)
            if record.id in self.records:
                self._finish_attempt(record, outcome)

    def _connection_free(self, _: object, domain: str, batch: Batch) -> None:
        left = self._connections.get(domain, 1) - 1
        if left:
            self._connections[domain] = left
        else:
            self._connections.pop(domain, None)
        for record, _recipients in batch:
            self._release(record, domain)  # after a courier failure (a bug), try again later
            if record.id in self.records:
                self._wake(record)
        self._schedule()

    def _release(self, record: QueueRecord, domain: str) -> None:
        domains = self._in_flight.get(record.id)
        if domains is not None:
            domains.discard(domain)
            if not domains:
                del self._in_flight[record.id]

    def _finish_attempt(self, record: QueueRecord, outcome: Outcome) -> None:
        """Note the notices an attempt calls for in the record, then settle it."""
        for notice in outcome.notices.values():
            addresses = tuple(recipient.address for recipient in notice.recipients)
            record.owed.append((notice.action.value, addresses))
        self._settle(record)

    def _settle(self, record: QueueRecord) -> None:
        """Save the record; then hand over the notices it owes; then, once nothing is left to
        deliver or to tell, remove it. Whatever fails is tried again later: a record leaves
        the queue only when every notice it owed is on its way."""

        if self.records.get(record.id) is not record:
            return  # deleted, or finished, meanwhile

        def saved(_: None) -> None:
            if self.records.get(record.id) is not record:
                return  # deleted meanwhile
            if record.owed:
                self._hand_over(record)
            elif record.done and not self._in_flight.get(record.id):
                self.records.pop(record.id, None)
                self._remove(record.id)
                events.outbound_done(id=record.id, recipients=len(record.recipients))

        def failed(failure: Failure) -> None:
            self._log_failure(failure, "saving", record.id)
            self._settle_later(record)

        self._persist(record).addCallbacks(saved, failed)

    def _settle_later(self, record: QueueRecord) -> None:
        """Try :meth:`_settle` again in a while: one timer per record, however many
        failures asked for it."""
        if record.id in self._retries or not self.running:
            return

        def again() -> None:
            del self._retries[record.id]
            self._settle(record)

        self._retries[record.id] = self._clock.callLater(RETRY_LATER, again)

    def _cancel_retry(self, id: str) -> None:
        retry = self._retries.pop(id, None)
        if retry is not None and retry.active():
            retry.cancel()

    def _hand_over(self, record: QueueRecord) -> None:
        if record.id in self._notifying:
            return
        self._notifying.add(record.id)
        owed = list(record.owed)

        def sent(_: None, entry: tuple[str, tuple[str, ...]]) -> None:
            record.owed.remove(entry)

        def not_sent(failure: Failure, entry: tuple[str, tuple[str, ...]]) -> None:
            self._log_failure(failure, f"sending the {entry[0]} notice for", record.id)

        sends = [
            maybeDeferred(self._notifier.send, record, self._notice(record, entry)).addCallbacks(
                sent, not_sent, callbackArgs=(entry,), errbackArgs=(entry,)
            )
            for entry in owed
        ]

        def all_tried(_: object) -> None:
            self._notifying.discard(record.id)
            if self.records.get(record.id) is not record:
                return
            if any(entry in owed for entry in record.owed):  # some could not be sent
                self._settle_later(record)
            else:
                self._settle(record)  # saves the shorter list, or sends what came since

        DeferredList(sends).addBoth(all_tried)

    def _notice(self, record: QueueRecord, entry: tuple[str, tuple[str, ...]]) -> Notice:
        action, addresses = entry
        by_address = {recipient.address: recipient for recipient in record.recipients}
        return Notice(Action(action), [by_address[a] for a in addresses if a in by_address])

    def _remove(self, id: str) -> None:
        """Remove a finished or deleted entry's files, after any save of it in progress (the
        save must not bring the record back)."""
        self._leaving.add(id)

        def remove(_: object = None) -> None:
            def gone(_: None) -> None:
                self._leaving.discard(id)

            def failed(failure: Failure) -> None:
                # Left in _leaving: the files stay until the next start-up reads them again.
                self._log_failure(failure, "removing", id)

            self._store.remove(id).addCallbacks(gone, failed)

        saving = self._saving.get(id)
        if saving is None:
            remove()
        else:
            saving.addBoth(remove)

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
        if record.id in self._leaving or (
            record.done and not record.owed and not self._in_flight.get(record.id)
        ):
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
