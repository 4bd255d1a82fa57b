"""What dspark-hf says on stderr (progress lines, one warning per kind of fallback) and what it counts: every fast-path
fallback and every CUDA-graph capture, process-wide (`fallback_counts`, `capture_count`) and for the `generate()`
call being run (`CallEvents`, which the routing leaves in `drafter.stats`)."""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

_WARNED: set[str] = set()
_FALLBACKS: Counter[str] = Counter()
_CAPTURES = [0]


@dataclass
class CallEvents:
    """What happened on the fast path during one `generate()` call."""

    fallbacks: list[str] = field(default_factory=list)  # the kind of each fallback, in order
    captures: int = 0  # CUDA graphs captured (0 in the steady state: graphs are kept across calls)


_CALL: contextvars.ContextVar[CallEvents | None] = contextvars.ContextVar("dspark_call_events", default=None)


def log(message: str) -> None:
    """A `[dspark]` progress line on stderr (stdout stays for results)."""
    print(f"[dspark] {message}", file=sys.stderr, flush=True)


def warn_once(key: str, message: str) -> None:
    """One `[dspark]` line per process and kind of event: a fallback is worth knowing, not worth a flood."""
    if key not in _WARNED:
        _WARNED.add(key)
        log(message)


def fallback(kind: str, message: str) -> None:
    """A fast path failed and an exact slower one runs instead: counted every time, said once per kind."""
    _FALLBACKS[kind] += 1
    events = _CALL.get()
    if events is not None:
        events.fallbacks.append(kind)
    warn_once(kind, f"{message} (every fallback is counted: dspark_hf.fallback_counts())")


def captured() -> None:
    """A CUDA graph was captured."""
    _CAPTURES[0] += 1
    events = _CALL.get()
    if events is not None:
        events.captures += 1


def fallback_counts() -> dict[str, int]:
    """Fast-path fallbacks in this process so far, by kind (`verify-capture`, `drafting-capture`, `static-loop`)."""
    return dict(_FALLBACKS)


def capture_count() -> int:
    """CUDA graphs captured in this process so far."""
    return _CAPTURES[0]


@contextlib.contextmanager
def recording_call() -> Iterator[CallEvents]:
    """Collect the fallbacks and captures of the call run inside."""
    events = CallEvents()
    token = _CALL.set(events)
    try:
        yield events
    finally:
        _CALL.reset(token)
