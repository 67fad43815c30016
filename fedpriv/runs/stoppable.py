"""ServerApp Grid wrappers: a forwarding base, and a Grid that stops when its run is interrupted.

Flower's ``send_and_receive`` waits up to the round timeout (10 minutes by default) for replies;
after a Ctrl-C those never come. :class:`StoppableGrid` checks a stop event between polls, so
the server stops within 0.1 s and the last complete round's checkpoint stays the restart point.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

__all__ = ["DelegatingGrid", "GridStopped", "StoppableGrid"]


class GridStopped(Exception):
    """Raised in the ServerApp thread when its run was asked to stop."""


class DelegatingGrid(Grid):
    """A Grid that forwards every call to ``inner``; subclasses override what they change."""

    def __init__(self, inner: Grid) -> None:
        self._inner = inner

    def set_run(self, run: Run) -> None:
        self._inner.set_run(run)

    @property
    def run(self) -> Run:
        return self._inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._inner.send_and_receive(messages, timeout=timeout)


class StoppableGrid(DelegatingGrid):
    """A Grid whose waits end (with :class:`GridStopped`) once ``stop`` is set."""

    def __init__(self, inner: Grid, stop: threading.Event, *, poll: float = 0.1) -> None:
        super().__init__(inner)
        self._stop = stop
        self._poll = poll

    def _check(self) -> None:
        if self._stop.is_set():
            raise GridStopped("the run was interrupted")

    def get_node_ids(self) -> Iterable[int]:
        self._check()
        return self._inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._check()
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._check()
        return self._inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Flower's ``send_and_receive`` (push, then pull until every reply or the timeout),
        checking the stop event between polls."""
        pending = set(self.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending and (end is None or time.monotonic() < end):
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if pending:
                self._stop.wait(self._poll)
        return replies
