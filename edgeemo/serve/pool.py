"""The worker pool: ``parallel`` EmotionModels, a bounded queue, routing for the prompt cache."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

from ..steer import EmotionModel


class QueueFull(Exception):
    pass


class Waiter:
    """A request waiting for a worker."""

    def __init__(self, future: asyncio.Future, prompt, wants, until: float):
        self.future = future        # resolved with the worker
        self.prompt = prompt        # its messages or text (None: the probe)
        self.wants = wants          # the worker that holds its prompt's prefix, or None
        self.until = until          # loop time from which any free worker will do


class WorkerPool:
    """``parallel`` EmotionModels, each used by one request at a time, and a bounded queue.

    Requests get free workers in their order of arrival, each the worker that has been free the
    longest. Routing (``route_wait`` not None, for the prompt cache): a worker remembers what its
    cache holds, the messages or text of its last request (and its reply, once finished). A
    request whose prompt begins with that (a chat's next turn sends the conversation so far) goes
    to that worker. If the worker is busy, a request that extends what it is reading (such as a
    title asked for a chat while its turn is written) waits up to ``route_wait`` seconds for it,
    requests behind it going first meanwhile, then takes any free worker.
    Everything here runs in the event loop but :meth:`release`, which hands the worker back to it.
    """

    def __init__(self, runtimes: list[EmotionModel], queue_size: int, *,
                 route_wait: float | None = None):
        self.runtimes = runtimes
        self.queue_size = queue_size
        self.route_wait = route_wait
        self.executor = ThreadPoolExecutor(len(runtimes), thread_name_prefix="edgeemo-worker")
        self.idle = list(runtimes)          # free workers, the longest free first
        self.held: dict = {}                # worker -> the messages or text it holds
        self.waiters: list[Waiter] = []     # first come, first served
        self.stats = {"requests": 0, "completed": 0, "cancelled": 0, "failed": 0, "rejected": 0,
                      "routed": 0, "tokens": 0}         # routed: to the worker holding a prefix
        self._lock = threading.Lock()                   # stats are counted from the workers
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def busy(self) -> int:
        return len(self.runtimes) - len(self.idle)

    @property
    def waiting(self) -> int:
        return len(self.waiters)

    def holder(self, prompt) -> EmotionModel | None:
        """The worker holding what ``prompt`` begins with (the longest), or None; a busy worker
        only if ``prompt`` goes on beyond its request's (a chat that merely opens as another
        does would evict that chat from the worker)."""
        if prompt is None or self.route_wait is None:
            return None
        found, longest = None, 0
        for runtime, held in self.held.items():
            if type(held) is type(prompt) and len(held) > longest \
                    and prompt[:len(held)] == held \
                    and (runtime in self.idle or len(prompt) > len(held)):
                found, longest = runtime, len(held)
        return found

    async def take(self, gone: asyncio.Future, prompt=None) -> EmotionModel | None:
        """A worker once one is free for this request (``prompt``: its messages or text), or
        None if ``gone`` (the client left) ends first.

        Raises QueueFull when ``queue_size`` requests are already waiting and no worker is free.
        Whatever way the wait ends (the client gone, or this coroutine cancelled), a worker that
        was handed over meanwhile goes back to the pool.
        """
        loop = self._loop = asyncio.get_running_loop()
        wants = self.holder(prompt)
        if len(self.waiters) >= self.queue_size:
            if not self.idle:
                self.count("rejected")
                raise QueueFull()
            wants = None                            # no room to wait for one worker
        waiter = Waiter(loop.create_future(), prompt, wants,
                        loop.time() + (self.route_wait or 0))
        self.waiters.append(waiter)
        self._dispatch()
        if not waiter.future.done() and wants is not None:
            loop.call_later(self.route_wait, self._dispatch)    # then any free worker will do
        try:
            await asyncio.wait({waiter.future, gone}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._give_up(waiter)
            raise
        if gone.done():
            self._give_up(waiter)
            return None
        return waiter.future.result()

    def _dispatch(self) -> None:
        """Hand free workers to waiting requests, in order; one waiting for its busy holder is
        passed over until its wait is up, and the others leave the workers it wants alone."""
        now = self._loop.time()
        routing = [w for w in self.waiters if w.wants is not None and now < w.until]
        for waiter in list(self.waiters):
            if not self.idle:
                return
            if waiter in routing:
                if waiter.wants not in self.idle:
                    continue
                runtime = waiter.wants
                self.count("routed")
            else:
                wanted = {w.wants for w in routing}
                runtime = next((r for r in self.idle if r not in wanted), self.idle[0])
            self.idle.remove(runtime)
            self.waiters.remove(waiter)
            if waiter.prompt is not None:           # its cache is the new request's now
                self.held[runtime] = waiter.prompt
            waiter.future.set_result(runtime)

    def _give_up(self, waiter: Waiter) -> None:
        if waiter.future.done() and not waiter.future.cancelled():
            self._put_back(waiter.future.result())
        else:
            waiter.future.cancel()
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)
            self._dispatch()                        # those it held back may go now

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.stats[what] += n

    def release(self, runtime: EmotionModel, held=None) -> None:
        """Give a worker back, ``held`` what its cache now holds (the messages or text of its
        request, its reply included) if known; safe to call from any thread."""
        with contextlib.suppress(RuntimeError):         # the loop is gone: shutting down
            self._loop.call_soon_threadsafe(self._put_back, runtime, held)

    def _put_back(self, runtime: EmotionModel, held=None) -> None:
        if held is not None:
            self.held[runtime] = held
        self.idle.append(runtime)
        self._dispatch()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        for runtime in self.runtimes:
            runtime.close()
