"""Asynchronous batch prefetch for the training loop (performance switch `--prefetch N`).

A background thread builds the batches of steps start, start+1, ... ahead of the loop and keeps at most `depth`
of them ready in a queue; on CUDA it also pins them and starts the host-to-device copy early. Batches are a pure
function of (seed, step) and the queue is FIFO, so the loop sees exactly the batches, in exactly the order, that
it would have built itself: prefetching changes timing only, never what is trained (tests check bit-identity).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import torch

_DONE = object()


class BatchPrefetcher:
    """Iterates (step, inputs, targets) for steps in [start, stop), built by `make(step)` in a background thread.

    depth 0 builds each batch in the calling thread (no thread at all), for comparison and for debugging."""

    def __init__(self, make: Callable[[int], tuple[torch.Tensor, torch.Tensor]], start: int, stop: int,
                 depth: int = 2, device: torch.device | None = None):
        if depth < 0:
            raise ValueError("prefetch depth must be >= 0")
        self.make, self.start, self.stop, self.depth = make, start, stop, depth
        self.device = device
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _to_device(self, batch):
        if self.device is None or self.device.type == "cpu":
            return batch
        if self.device.type == "cuda":  # pinned memory lets the copy overlap with compute
            return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in batch)
        return tuple(t.to(self.device) for t in batch)

    def _produce(self):
        try:
            for step in range(self.start, self.stop):
                item = (step, *self._to_device(self.make(step)))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(_DONE)
        except BaseException as exc:  # re-raised in the consumer, with its traceback
            self._queue.put(exc)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        if self.depth == 0:
            for step in range(self.start, self.stop):
                yield (step, *self._to_device(self.make(step)))
            return
        self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():  # drain so a blocked put() sees the stop flag
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.05)
            self._thread = None
