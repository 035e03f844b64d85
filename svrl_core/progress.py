"""Progress lines with rate and ETA through the `svrl` logger (Prefect captures it)."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("svrl")


class Progress:
    """Logs `name: done/total (pct) rate ETA metrics` at most every `every_s` seconds."""

    def __init__(self, name: str, total: int, unit: str = "it", every_s: float = 5.0):
        self.name, self.total, self.unit, self.every_s = name, total, unit, every_s
        self.start = self.last = time.monotonic()

    def update(self, done: int, **metrics: float) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        shown = " ".join(f"{k}={v:.3g}" for k, v in metrics.items())
        logger.info("%s: %d/%d %s (%.0f%%) %.2f %s/s ETA %.0fs %s", self.name, done, self.total, self.unit,
                    100 * done / max(self.total, 1), rate, self.unit, eta, shown)
