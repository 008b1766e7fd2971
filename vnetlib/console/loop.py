"""A listener that runs its own asyncio loop in a thread of its own: the
console relay, the SSH front door and the web console share this life cycle
(start, listen, shut down, stop), each filling in `_listen` and `_shutdown`."""

from __future__ import annotations

import asyncio
import contextlib
import threading

START_SECONDS = 10
STOP_SECONDS = 15
JOIN_SECONDS = 10


class LoopThread:
    """Subclasses set `_thread_name` and define `_listen` and `_shutdown`."""

    _thread_name = "vnet-loop"

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def _listen(self) -> None:
        raise NotImplementedError

    async def _shutdown(self) -> None:
        raise NotImplementedError

    def _start_loop(self) -> None:
        """Run the loop in its thread and wait until `_listen` is done; on a
        failure, stop again and raise it."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, daemon=True,
                                        name=self._thread_name)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), loop).result(START_SECONDS)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Shut down (bounded), stop the loop and join its thread; idempotent."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(STOP_SECONDS)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(JOIN_SECONDS)
        loop.close()
        self._loop = None
