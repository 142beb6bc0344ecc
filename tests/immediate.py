"""Stand-ins that run "threaded" work at once, in the test's thread, so Deferreds from
``deferToThreadPool`` and the group committer have fired by the time the call returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mailserver.committer import Job, PendingJob, commit_batch


class ImmediateThreadPool:
    """Stand-in for ThreadPool: ``callInThreadWithCallback`` runs the call at once, here,
    and counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, object], None], func: Callable[..., Any], *args: Any
    ) -> None:
        self.calls += 1
        try:
            result = func(*args)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class ImmediateReactor:
    """Stand-in for IReactorFromThreads: ``callFromThread`` calls at once."""

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        f(*args)


class SynchronousCommitter:
    """Runs each submitted job at once, as a batch of one, with the real commit logic."""

    def submit(self, job: Job[Any]) -> Deferred[Any]:
        pending = PendingJob(job, Deferred())
        commit_batch([pending])
        pending.fire()
        return pending.deferred
