"""A bounded map whose least recently used entries go first, and whose entries may expire.

The per-process caches of the hot paths use it: presigned URLs (core/storage.py), built
bundles seen stored (core/bundles.py), derivative messages (server/convert.py).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringLRU(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self.size = size  # 0 keeps nothing
        self._entries: OrderedDict[K, tuple[V, float | None]] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value, if present and not expired (it becomes the most recently used)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, until = entry
        if until is not None and until <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, ttl: float | None = None) -> None:
        """Keep `value` for `ttl` seconds (None: until evicted)."""
        if self.size <= 0:
            return
        self._entries[key] = (value, None if ttl is None else time.monotonic() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
