"""A one-slot mailbox between a subscription callback and a worker: never blocks, never builds a backlog."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class FrameMailbox(Generic[T]):
    """Holds the newest item only. ``put`` replaces an unread item (returned, so the caller can count
    it as dropped); ``take`` waits for an item, at most ``timeout`` seconds; ``close`` wakes waiters."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._closed = False
        self._ready = threading.Condition(threading.Lock())

    def put(self, item: T) -> T | None:
        """Store ``item``; return the unread item it replaced (or None)."""
        with self._ready:
            replaced, self._item = self._item, item
            self._ready.notify()
        return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item (removing it), or None after ``timeout`` seconds or when closed."""
        with self._ready:
            if self._item is None and not self._closed:
                self._ready.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> T | None:
        """Wake every waiter for good; return the unread item, if any (it will never be taken)."""
        with self._ready:
            self._closed = True
            item, self._item = self._item, None
            self._ready.notify_all()
            return item

    @property
    def closed(self) -> bool:
        return self._closed
