"""Progress that shows wherever the output goes: a rich bar on a terminal, plain lines elsewhere.

A rich live bar draws nothing when stdout is not a terminal (a log file, CI, a pipe), so a run
there would give no sign of where it is. ``Progress`` then prints a plain line instead (stage,
done/total, rate, elapsed, ETA) at the first update, every ``interval`` seconds and at the end.
Messages may carry rich markup (``[bold yellow]...[/]``); ``print_clean`` renders it on a
terminal and strips it elsewhere, so a log never shows raw markup.
"""

from __future__ import annotations

import sys
import time

# Seconds between plain progress lines when the output is not a terminal.
PLAIN_INTERVAL_S = 30.0


def is_terminal() -> bool:
    from rich.console import Console

    return Console(file=sys.stdout).is_terminal


def print_clean(message: str, console=None) -> None:
    """Print ``message`` (rich markup allowed): styled on a terminal, as plain text otherwise."""
    if console is not None and console.is_terminal:
        console.print(message)
        return
    from rich.text import Text

    print(Text.from_markup(message).plain, flush=True)


def warning_markup(message: str) -> str:
    """``message`` as a highlighted warning; its own brackets (``[warning] ...``) are escaped, so
    rich shows them instead of reading them as markup tags."""
    from rich.markup import escape

    return f"[bold yellow]{escape(message)}[/]"


def _clock(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """One stage's progress, ``total`` units; ``enabled=False`` shows nothing at all."""

    def __init__(self, title: str, total: int, completed: int = 0, enabled: bool = True, interval: float = PLAIN_INTERVAL_S, unit: str = "it"):
        self.title, self.total, self.unit, self.interval = title, total, unit, interval
        self.completed = self._start = completed
        self._started = time.time()
        self._last_line = None  # time of the last plain line; None: none printed yet
        self._bar = self._task = None
        self.plain = enabled and not is_terminal()
        if enabled and not self.plain:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn(f"[bold]{title}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self._task = self._bar.add_task(title, total=total, completed=completed, rate="", info="")
            self._bar.start()

    def update(self, completed: int, info: str = "", rate: str = "") -> None:
        self.completed = completed
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, info=info, rate=rate)
        elif self.plain:
            now = time.time()
            if self._last_line is None or now - self._last_line >= self.interval or completed >= self.total:
                self._last_line = now
                print(self.line(info, rate), flush=True)

    def advance(self, n: int = 1, info: str = "", rate: str = "") -> None:
        self.update(self.completed + n, info, rate)

    def line(self, info: str = "", rate: str = "") -> str:
        """``title: done/total (pct%), rate, elapsed h:mm:ss, eta h:mm:ss, info``."""
        elapsed = time.time() - self._started
        per_second = (self.completed - self._start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.completed) / per_second if per_second > 0 else None
        parts = [f"{self.title}: {self.completed}/{self.total} ({100 * self.completed / max(self.total, 1):.0f}%)", rate or f"{per_second:.2f} {self.unit}/s", f"elapsed {_clock(elapsed)}"]
        parts.append(f"eta {_clock(eta)}" if eta is not None else "eta ?")
        if info:
            parts.append(info)
        return ", ".join(parts)

    def print(self, message: str) -> None:
        print_clean(message, self._bar.console if self._bar is not None else None)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
