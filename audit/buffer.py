"""Off-the-hot-path writers: the gateway appends plain dicts; batches reach Postgres later.

A writer flushes `interval` seconds after the first item of a batch (on a worker thread, never
on the event loop), when asked, and at interpreter exit. When the database refuses a batch the
items stay queued, up to `max_items` (oldest dropped beyond that, with a warning). Whatever is
still queued at exit and cannot be written is spooled to a JSON Lines file under
`AXS_SPOOL_DIR`, replayed by the next flush of any process of that writer.
"""

import asyncio
import atexit
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections

logger = logging.getLogger(__name__)

Item = dict[str, Any]


class BatchWriter:
    def __init__(
        self, name: str, write: Callable[[list[Item]], int], *, interval: float, max_items: int, batch: int = 1000, at_exit: bool = True
    ):
        self.name = name
        self._write = write
        self.interval = interval
        self.max_items = max_items
        self.batch = batch
        self._items: deque[Item] = deque()
        self._flush_lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.failed = False
        if at_exit:
            _writers.append(self)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Item) -> None:
        """Queue one item (memory only) and make sure a flush is scheduled on the running loop."""
        if len(self._items) >= self.max_items:
            self._items.popleft()
            self.dropped += 1
            if self.dropped % 1000 == 1:
                logger.warning("%s spool full, dropping oldest", self.name, extra={"writer": self.name, "dropped": self.dropped})
        self._items.append(item)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # synchronous callers flush explicitly; exit flushes the rest
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        while self._items:
            await asyncio.sleep(self.interval if not self.failed else max(self.interval, 5.0))
            await sync_to_async(self.flush, thread_sensitive=False)()

    async def aflush(self) -> int:
        return await sync_to_async(self.flush, thread_sensitive=False)()

    def flush(self) -> int:
        """Write everything queued (DB), in batches; on a database error keep the rest queued and return."""
        written = 0
        with self._flush_lock:
            close_old_connections()
            try:
                self._replay_spool()
            except DatabaseError:
                self.failed = True
                return written
            while self._items:
                batch = [self._items.popleft() for _ in range(min(self.batch, len(self._items)))]
                try:
                    written += self._write(batch)
                except DatabaseError:
                    self._items.extendleft(reversed(batch))
                    if not self.failed:
                        logger.warning("%s: database refused a batch, keeping %d queued", self.name, len(self._items), exc_info=True, extra={"writer": self.name})
                    self.failed = True
                    return written
            self.failed = False
        return written

    def _spool_dir(self) -> Path:
        return Path(settings.AXS_SPOOL_DIR)

    def spool(self) -> Path | None:
        """Write what is still queued to a spool file (disk) for a later process to replay."""
        if not self._items:
            return None
        directory = self._spool_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}-{int(time.time())}-{os.getpid()}-{uuid.uuid4().hex[:6]}.jsonl"
        with path.open("wb") as out:
            while self._items:
                out.write(orjson.dumps(self._items.popleft(), default=str) + b"\n")
        logger.warning("%s: database unreachable at exit, spooled to %s", self.name, path, extra={"writer": self.name})
        return path

    def _replay_spool(self) -> None:
        directory = self._spool_dir()
        if not directory.is_dir():
            return
        for path in sorted(directory.glob(f"{self.name}-*.jsonl")):
            claimed = path.with_suffix(".replaying")
            try:
                path.rename(claimed)  # atomic claim: one process replays each file
            except OSError:
                continue
            items = [orjson.loads(line) for line in claimed.read_bytes().splitlines() if line.strip()]
            try:
                self._write(items)
            except DatabaseError:
                claimed.rename(path)
                raise
            claimed.unlink()
            logger.info("%s: replayed %d spooled items", self.name, len(items), extra={"writer": self.name})

    def close(self) -> None:
        """Flush (DB) and spool (disk) whatever the flush could not write."""
        try:
            self.flush()
        except Exception:
            logger.exception("%s: final flush failed", self.name, extra={"writer": self.name})
        self.spool()


_writers: list[BatchWriter] = []


def flush_all() -> None:
    for writer in _writers:
        writer.close()


# Daphne returns from run() on SIGINT/SIGTERM and the interpreter then exits normally, so a
# clean shutdown always passes here.
atexit.register(flush_all)
