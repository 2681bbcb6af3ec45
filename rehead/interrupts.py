"""Ctrl-C, even when it lands where Python ignores it.

A KeyboardInterrupt raised inside a destructor (a DataLoader iterator being collected between
epochs) is "ignored": Python prints its traceback and goes on, so the fit would run to its end
after a Ctrl-C. The CLI installs ``catch_ignored`` (``rehead.fit`` for its own call); the training and
extraction loops call ``check`` at every step, so such a Ctrl-C stops the run there, as any other does.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

_pending = threading.Event()
_arrived = threading.Event()
_deferring = threading.Event()


def install() -> None:
    """The command line's handlers: an ignored Ctrl-C still stops the command, and SIGTERM (a
    scheduler's, `timeout`'s, `kill`'s) stops it as Ctrl-C does, saying how to resume, where it
    ended the process unsaid."""
    catch_ignored()

    def stop(signum, frame):
        _arrived.set()
        if _deferring.is_set():  # inside ``deferred``: raised when its block ends
            _pending.set()
            return
        raise KeyboardInterrupt
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def stopped() -> bool:
    """Whether an error now may be a stop's doing: a Ctrl-C Python ignored (``pending``) or a Ctrl-C /
    SIGTERM that reached the process (``arrived``)."""
    return pending() or arrived()


def arrived() -> bool:
    """Whether a Ctrl-C or SIGTERM reached this process (an error raised around it may be its doing)."""
    return _arrived.is_set()


def catch_ignored() -> None:
    """Route an ignored KeyboardInterrupt to ``check`` instead of printing a traceback."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            _pending.set()
            return
        previous(unraisable)
    sys.unraisablehook = hook


@contextmanager
def ignored_caught():
    """``catch_ignored`` for one call from Python (``rehead.fit``): a Ctrl-C that lands in a destructor or a
    fork hook stops it as under the CLI; the caller's hook comes back after, and a Ctrl-C still pending when
    the call ends is dropped, not left to stop the next call at its first step."""
    previous = sys.unraisablehook
    catch_ignored()
    try:
        yield
    finally:
        sys.unraisablehook = previous
        _pending.clear()


def pending() -> bool:
    """Whether a Ctrl-C was ignored and not raised yet: an error right after it (a DataLoader whose
    workers the same Ctrl-C stopped) is the interrupt's doing, not a failure of its own."""
    return _pending.is_set()


def check() -> None:
    """Raise the Ctrl-C that an ignored KeyboardInterrupt stood for, once."""
    if _pending.is_set():
        _pending.clear()
        raise KeyboardInterrupt


@contextmanager
def deferred():
    """A block a Ctrl-C or SIGTERM does not cut in two (renames that only make sense together): one
    arriving inside it is raised when the block ends. Only under the CLI's handlers (``install``)."""
    _deferring.set()
    try:
        yield
    finally:
        _deferring.clear()
    check()
