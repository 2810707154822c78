"""Peak memory of the process a stage runs in, for the per-stage costs in every iteration's metrics."""

from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def rss_mb_of(title_prefixes: tuple[str, ...]) -> float:
    """Summed resident memory of the processes whose title (Ray's `ray::<actor>`) starts with one of the
    prefixes, in MiB."""
    import psutil

    total = 0
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        cmd = " ".join(proc.info["cmdline"] or ())
        if proc.info["memory_info"] and cmd.startswith(title_prefixes):
            total += proc.info["memory_info"].rss
    return total / 2**20


class PeakMemory:
    """Samples rss_mb_of(prefixes) every `every` seconds on a thread, from `with` entry to exit; `.peak` is the
    largest sum seen (for services, whose processes are Ray's, not this one)."""

    def __init__(self, title_prefixes: tuple[str, ...], every: float = 0.5):
        import threading

        self.prefixes, self.every, self.peak = title_prefixes, every, 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_mb_of(self.prefixes))
            self._done.wait(self.every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


SERVE_PROCESSES = ("ray::ServeReplica", "ray::ProxyActor", "ray::ServeController")
