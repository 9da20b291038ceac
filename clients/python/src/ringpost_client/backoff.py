"""Exponential backoff with "equal jitter", as ``src/client.rs`` does it.

The n-th delay (from 0) is drawn uniformly from [d/2, d] with d = min(initial * 2**n, max):
half of each delay is fixed so retries never bunch up at 0, the random half spreads a crowd of
clients reconnecting at once.
"""

import random as _random
from typing import Callable


class Backoff:
    def __init__(self, initial: float = 0.1, maximum: float = 30.0, rand: Callable[[], float] = _random.random):
        if not (initial > 0 and maximum >= initial):
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {initial} and {maximum}")
        self.initial = initial
        self.maximum = maximum
        self._rand = rand
        self._attempt = 0

    def ceiling(self) -> float:
        """Upper bound of the next delay (before jitter), seconds."""
        return min(self.initial * 2 ** min(self._attempt, 40), self.maximum)

    def next(self) -> float:
        """The next delay in seconds; each call doubles the ceiling up to ``maximum``."""
        d = self.ceiling()
        self._attempt += 1
        return d / 2 + self._rand() * (d / 2)

    def reset(self) -> None:
        """After a successful login: the next delay starts from ``initial`` again."""
        self._attempt = 0
