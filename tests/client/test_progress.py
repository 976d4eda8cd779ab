"""The command line's progress bar: drawn on a terminal only, throttled, erased before other output."""

from __future__ import annotations

import io

from cnnserve.client._progress import ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_nothing_is_drawn_when_the_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(100, stream)
    for _ in range(100):
        bar.advance()
    bar.close()
    assert not bar.enabled and stream.getvalue() == ""


def test_a_terminal_gets_a_bar_that_reaches_the_total() -> None:
    stream = Terminal()
    bar = ProgressBar(10, stream, width=10, min_interval=3600)
    bar.advance()
    for _ in range(9):
        bar.advance()
    drawn = stream.getvalue().split("\r\x1b[K")
    assert drawn[1].startswith("[#.........]  1/10  10%"), "the first update draws at once"
    assert drawn[-1].startswith("[##########] 10/10 100%"), "the last update always draws"
    assert len(drawn) == 3, "updates in between are throttled"


def test_clear_erases_the_bar_until_it_is_drawn_again() -> None:
    stream = Terminal()
    bar = ProgressBar(4, stream, width=4, min_interval=3600)
    bar.advance()
    bar.clear()
    assert stream.getvalue().endswith("\r\x1b[K")
    bar.advance()
    assert stream.getvalue().endswith("\r\x1b[K"), "throttled: still erased"
    bar.advance(2)
    assert stream.getvalue().rsplit("\r\x1b[K", 1)[-1].startswith("[####] 4/4 100%")
    bar.close()
    assert stream.getvalue().endswith("\r\x1b[K")
