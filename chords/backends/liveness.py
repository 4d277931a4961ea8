"""Deadlines on progress, liveness in both directions, bounded teardown (gloo and NCCL alike).

* Rank 0 never blocks in a transport wait. :class:`Waiter` (a helper thread) waits for the
  pending sends and receives, and rank 0's main thread waits on a ``threading.Event`` with its
  own deadline: so the deadline, a worker's death seen by the :class:`Watchdog`, and a signal
  (Ctrl-C) each end the wait at once, whatever the transport does. (A gloo wait that times out
  closes the connection, and gloo's p2p works have no future; an NCCL wait does not block the
  host at all: the helper polls ``is_completed()`` there.)
* Progress, not a whole job, has a deadline: a worker running a sequential reference (REF)
  adds to a counter in the rendezvous store as it goes (:class:`Progress`, at most 4 times a
  second); rank 0's deadline moves with the counter, so a rank that makes no progress for
  ``timeout_s`` is named within about ``timeout_s`` whatever the job's length.
* No rank outlives rank 0: rank 0 adds to a heartbeat counter in the store every second
  (:class:`Beacon`); each worker watches it (:class:`Rank0Watch`) and exits when it has not
  moved for :data:`RANK0_SILENCE_S` (rank 0 died, was stopped, or the store went away), even
  while its main thread sits in an NCCL receive with a week-long timeout.
* Teardown is bounded (:func:`bounded`): ``destroy_process_group`` can hang on a pending NCCL
  receive, so it runs in a helper thread that is given a few seconds.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from datetime import timedelta
from multiprocessing.connection import wait as wait_any
from typing import Any, Callable, Sequence

import torch.distributed as dist

log = logging.getLogger(__name__)

BEAT_S = 1.0  #: rank 0's heartbeat period
RANK0_SILENCE_S = 8.0  #: a worker exits when rank 0's heartbeat has not moved for this long
PROGRESS_S = 0.25  #: a reference adds to its progress counter at most this often
_WAKE_S = 0.25  #: how often a waiting rank 0 looks at a progress counter


def store_keys() -> str:
    """The prefix of this job's keys in the rendezvous store (a torchrun agent's store outlives
    restarts: each restart gets its own keys)."""
    run = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return f"chords/{run}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"


def store_client(host: str, port: int, timeout_s: float = 30.0) -> dist.TCPStore:
    """A client of the rendezvous store (the TCP store of the process group, on rank 0 or on
    torchrun's agent)."""
    return dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=timeout_s), wait_for_workers=False)


def bounded(fn: Callable[[], Any], timeout_s: float, what: str) -> bool:
    """Run ``fn`` in a daemon thread and give it ``timeout_s``; False (and a warning) if it has not
    returned by then (it is left behind; a daemon thread does not keep the process alive)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=run, name=f"chords-{what}", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        log.warning("%s did not finish within %gs; left behind", what, timeout_s)
        return False
    if errors:
        log.debug("%s: %s", what, errors[0])
    return True


class Pending:
    """Works rank 0 waits for, and what became of each: ``done[i]``, ``errors[i]`` (the exception its
    wait raised), and ``event``, set once every one is done (or by whoever ends the wait early)."""

    def __init__(self, works: Sequence[Any]):
        self.works = list(works)
        self.done = [False] * len(self.works)
        self.errors: list[BaseException | None] = [None] * len(self.works)
        self.event = threading.Event()

    def first_pending(self) -> int | None:
        return next((i for i, d in enumerate(self.done) if not d), None)


class Waiter:
    """Waits for pending works on behalf of rank 0's main thread (see the module's docstring).

    :meth:`submit` hands over a :class:`Pending`; the helper thread completes its works in order
    (gloo: ``wait()``, once: a gloo p2p work cannot be waited on twice, and its
    ``is_completed()`` never turns true; NCCL: ``is_completed()`` polled every 0.2 ms, as NCCL's
    own blocking wait polls, and rank 0's main thread then calls ``wait()`` to order its stream
    after the transfer) and sets the event. A submission while the helper is still stuck on an
    earlier one (a hung peer) gets a thread of its own."""

    def __init__(self, nccl: bool):
        self.nccl = nccl
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._busy = False
        self._thread: threading.Thread | None = None

    def _complete(self, pending: Pending) -> None:
        try:
            for i, w in enumerate(pending.works):
                try:
                    if self.nccl:
                        while not w.is_completed():
                            time.sleep(0.0002)
                    else:
                        w.wait()
                except BaseException as e:  # noqa: BLE001 - rank 0's main thread names the rank
                    pending.errors[i] = e
                pending.done[i] = True
        finally:
            pending.event.set()

    def _run(self) -> None:
        while True:
            pending = self._jobs.get()
            if pending is None:
                return
            self._busy = True
            try:
                self._complete(pending)
            finally:
                self._busy = False

    def submit(self, pending: Pending) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="chords-waiter", daemon=True)
            self._thread.start()
        if self._busy or not self._jobs.empty():
            threading.Thread(target=self._complete, args=(pending,), name="chords-waiter-extra", daemon=True).start()
            return
        self._jobs.put(pending)

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)


class Beacon:
    """Rank 0's heartbeat: adds 1 to ``key`` every :data:`BEAT_S` until closed."""

    def __init__(self, store: dist.Store, key: str):
        self._stop = threading.Event()
        self._store, self._key = store, key
        self.beat()
        self._thread = threading.Thread(target=self._run, name="chords-beacon", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        try:
            self._store.add(self._key, 1)
        except Exception as e:  # noqa: BLE001 - the store is gone: the workers notice the silence
            log.debug("heartbeat: %s", e)

    def _run(self) -> None:
        while not self._stop.wait(BEAT_S):
            self.beat()

    def close(self) -> None:
        """Stop beating, and let a store call in flight finish (a process that exits while a
        thread is inside the store client can abort)."""
        self._stop.set()
        self._thread.join(timeout=2)


class Rank0Watch:
    """In a worker: exit (``on_silence``, default ``os._exit(1)``) once rank 0's heartbeat has not
    moved for ``silence_s``. A poller thread reads the counter (a read may block if rank 0's
    store is stopped); a judge thread, which never blocks, decides. Time this process itself
    spent stopped (a job-control stop of the whole group) does not count as rank 0's silence."""

    def __init__(self, store: dist.Store, key: str, what: str, silence_s: float = RANK0_SILENCE_S,
                 on_silence: Callable[[], None] | None = None):
        self.gone = False
        self._store, self._key, self._what, self._silence = store, key, what, silence_s
        self._on_silence = on_silence or (lambda: os._exit(1))
        self._seen: int | None = None
        self._moved = time.monotonic()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="chords-rank0-poll", daemon=True)
        self._poller.start()
        threading.Thread(target=self._judge, name="chords-rank0-judge", daemon=True).start()

    def close(self) -> None:
        """Stop watching (rank 0 said STOP), and let a store call in flight finish."""
        self._closed.set()
        self._poller.join(timeout=2)

    def _poll(self) -> None:
        while not self.gone and not self._closed.is_set():
            try:
                value = self._store.add(self._key, 0)
            except Exception:  # noqa: BLE001 - the store (rank 0, or torchrun's agent) is gone: silence
                return
            with self._lock:
                if value != self._seen:
                    self._seen, self._moved = value, time.monotonic()
            self._closed.wait(BEAT_S / 2)

    def _judge(self) -> None:
        last = time.monotonic()
        while not self._closed.wait(BEAT_S / 2):
            now = time.monotonic()
            with self._lock:
                if now - last > 3 * BEAT_S:  # this process was stopped itself: start counting again
                    self._moved = now
                last = now
                silent = now - self._moved
            if silent > self._silence:
                self.gone = True
                log.error("%s: rank 0 has given no sign of life for %.0fs: exiting", self._what, silent)
                self._on_silence()
                return


class Progress:
    """A worker's progress counter in the store (a reference job adds to it as it goes)."""

    def __init__(self, store: dist.Store | None, key: str):
        self._store, self._key = store, key
        self._last = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if self._store is None or now - self._last < PROGRESS_S:
            return
        self._last = now
        try:
            self._store.add(self._key, 1)
        except Exception as e:  # noqa: BLE001 - rank 0 (the store) is gone; Rank0Watch ends this process
            log.debug("progress: %s", e)


class Watchdog:
    """Rank 0's watch on its spawned workers: the first one to exit while armed is recorded
    (``failure``: its rank and how it ended) and ``on_failure`` is called (it wakes rank 0's
    current wait). Sentinels are waited on, so a death is seen at once, and exit codes read
twice a second besides."""

    def __init__(self, procs: Sequence[Any], describe: Callable[[int], str], on_failure: Callable[[], None]):
        self.procs = list(procs)
        self.failure: tuple[int, str] | None = None
        self._describe, self._on_failure = describe, on_failure
        self._armed = True
        self._lock = threading.Lock()  # disarm() runs from a signal's thread and from close()
        self._wake_r, self._wake_w = os.pipe()
        threading.Thread(target=self._run, name="chords-watchdog", daemon=True).start()

    def _run(self) -> None:
        sentinels = {p.sentinel: rank for rank, p in enumerate(self.procs, start=1)}
        try:
            while sentinels:
                # a sentinel fires when the process has exited and nothing else holds its pipe (a
                # child it forked may): the exit codes are read too, twice a second
                ready = wait_any([*sentinels, self._wake_r], timeout=0.5)
                if self._wake_r in ready or not self._armed:
                    return
                for s, rank in list(sentinels.items()):
                    p = self.procs[rank - 1]
                    if s not in ready and p.exitcode is None:
                        continue
                    del sentinels[s]
                    p.join(timeout=1)  # reap it, so that its exit code is known
                    if self._armed and self.failure is None:
                        self.failure = (rank, self._describe(rank))
                        log.error("worker rank %d %s", rank, self.failure[1])
                        self._on_failure()
        finally:
            os.close(self._wake_r)

    def disarm(self) -> None:
        """Exits from now on are expected (a STOP, a stop signal, a teardown)."""
        with self._lock:
            if not self._armed:
                return
            self._armed = False
        os.write(self._wake_w, b"x")
        os.close(self._wake_w)
