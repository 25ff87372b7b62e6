"""A Ctrl-C that strikes inside a weakref callback (or a ``__del__``) stops the command instead of
printing ``Exception ignored`` with a traceback and running on (``cellseg.errors.keep_interrupts``).

The interrupt is raised by the callback itself, as Python's SIGINT handler does when the signal
arrives while the callback runs; each case runs in a fresh interpreter with SIGINT's default
handler (a pytest-xdist worker ignores SIGINT)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import signal, sys, time, weakref
signal.signal(signal.SIGINT, signal.default_int_handler)
if {keep}:
    from cellseg.errors import keep_interrupts
    keep_interrupts()
    keep_interrupts()  # idempotent: one hook, one re-delivery
class Tensor:
    pass
def torn_down(_):
    raise KeyboardInterrupt  # the signal landed while the callback ran
tensor = Tensor()
ref = weakref.ref(tensor, torn_down)
try:
    del tensor
    deadline = time.monotonic() + {seconds}
    while time.monotonic() < deadline:  # the training goes on
        pass
    print("ran on")
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.parametrize(
    ("keep", "printed", "ignored"), [(False, "ran on", True), (True, "interrupted", False)]
)
def test_an_interrupt_inside_a_weakref_callback(keep: bool, printed: str, ignored: bool) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(keep=keep, seconds=30 if keep else 1)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == printed, result.stderr
    assert ("Exception ignored" in result.stderr) is ignored, result.stderr
    assert ("Traceback" in result.stderr) is ignored, result.stderr
