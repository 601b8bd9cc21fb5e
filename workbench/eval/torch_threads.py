"""Pools of single-threaded workers for the tabs' torch work (Learn, Inspect): a view of one text is too little
work to share between cores, and while a training job keeps them busy every parallel op waits for one. On two
cores beside a busy test run: Learn's slider moves took 430 ms on two threads and 70 ms on one, a sentence's
first view 4.4 s and 0.5 s; the inspector's statistics of 256 tokens at a new temperature (V = 49k, read in
blocks of rows) 3.5-9 s on two threads and 0.37-0.59 s on one, at a load average of 5."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

Result = TypeVar("Result")


def _one_torch_thread() -> None:
    """Initializer of a pool's threads: one intra-op thread each. OpenMP keeps the setting per thread, but torch
    also makes it the default of threads that start later; a short-lived thread puts that default back, so no
    other part of the app runs single-threaded because of a pool."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    reset = threading.Thread(target=torch.set_num_threads, args=(before,), name="torch-threads-reset")
    reset.start()
    reset.join()


class TorchPool:
    """Two workers: a slider move runs beside another session's text being read, never behind it. A function
    run here must not wait on this pool itself (two such waits would hold both workers)."""

    def __init__(self, name: str, workers: int = 2):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name, initializer=_one_torch_thread)

    def run(self, fn: Callable[..., Result], *args) -> Result:
        return self._pool.submit(fn, *args).result()
