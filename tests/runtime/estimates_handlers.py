"""Handlers with known resource use, for the learned-estimates tests."""

from __future__ import annotations

import time


def burn(cpu_s: float = 0.0, mb: int = 0, hold_s: float = 0.0) -> dict:
    """Keep one core busy for ``cpu_s`` seconds while holding ``mb`` MiB (touched, so resident)."""
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):  # touch every page: untouched pages are not resident
        block[i] = 1
    end = time.thread_time() + cpu_s
    x = 0
    while time.thread_time() < end:
        x += 1
    if hold_s:
        time.sleep(hold_s)  # the step's own work: being slow (wall time without CPU)
    return {"mb": len(block) // (1024 * 1024), "spins": x > 0}


def burn_in_threads(cpu_s: float = 0.0, threads: int = 2) -> int:
    """Keep ``threads`` threads busy for ``cpu_s`` of CPU each (a library's thread pool, say)."""
    import threading

    def spin() -> None:
        end = time.thread_time() + cpu_s
        while time.thread_time() < end:
            pass

    workers = [threading.Thread(target=spin) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return threads
