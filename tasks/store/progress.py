"""Progress of the long loops (training epochs, prediction batches) as ML tools show it.

On a terminal, a tqdm bar on stderr. Elsewhere (a log file, a Prefect worker, CI) a bar
would be a stream of carriage returns, so the bar stays off and a log line says how far
the loop is every `every` steps and at the end, with the loss and the time elapsed:
a long run's log still shows it is alive and converging.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TextIO

from tqdm import tqdm

LOG_LINES = 10  # log lines per loop when not on a terminal (plus the last step)


@dataclass
class RunStatus:
    """Where this process's run stands: the stage being built and the last thing it saved.
    An interrupted `cscf` command says so in its one line (flows/cli.py)."""

    stage: str | None = None
    saved: str | None = None

    def begin(self, stage: str) -> None:
        self.stage, self.saved = stage, None

    def end(self) -> None:
        self.stage, self.saved = None, None


STATUS = RunStatus()


class Progress:
    """`update(done, **figures)` after each step; `done` counts the steps finished so far."""

    def __init__(self, what: str, total: int, log: logging.Logger, unit: str = "epoch", start: int = 0,
                 every: int | None = None, stream: TextIO | None = None) -> None:
        stream = stream or sys.stderr
        self.what, self.total, self.log, self.unit, self.done = what, total, log, unit, start
        self.every = every or max(1, total // LOG_LINES)
        self.next_log = (start // self.every + 1) * self.every
        self.began = time.perf_counter()
        # mininterval=0: every step redraws; steps (epochs, batches of 64Ki rows) take long enough
        self.bar = tqdm(total=total, initial=start, desc=what, unit=unit, file=stream, dynamic_ncols=True,
                        leave=False, mininterval=0) if stream.isatty() else None

    def update(self, done: int, **figures: float) -> None:
        shown = {k: f"{v:.4f}" for k, v in figures.items()}
        if self.bar is not None:
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(done - self.done)
        elif done >= self.next_log or done == self.total:
            self.next_log = (done // self.every + 1) * self.every
            self.log.info("%s: %s %d/%d%s, %.1f s elapsed", self.what, self.unit, done, self.total,
                          "".join(f", {k} {v}" for k, v in shown.items()), time.perf_counter() - self.began)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.log.info("%s: %d %ss in %.1f s", self.what, self.done, self.unit, time.perf_counter() - self.began)


@contextlib.contextmanager
def progress(what: str, total: int, log: logging.Logger, **options: Any) -> Iterator[Progress]:
    shown = Progress(what, total, log, **options)
    try:
        yield shown
    finally:
        shown.close()


@contextlib.contextmanager
def epoch_progress(what: str, epochs: int, log: logging.Logger, resume: dict[str, Any] | None,
                   save: Callable[[dict[str, Any]], None]) -> Iterator[Callable[[dict[str, Any]], None]]:
    """An `on_epoch_end` for cscf_model.train that saves the state with `save`, then shows the
    epoch and its mean loss; a resumed training starts counting at its checkpoint's epoch."""
    with progress(what, epochs, log, start=0 if resume is None else resume["epoch"] + 1) as shown:
        def on_epoch_end(state: dict[str, Any]) -> None:
            save(state)
            STATUS.saved = f"{what}: epoch {state['epoch'] + 1} of {epochs} saved"
            shown.update(state["epoch"] + 1, loss=state["losses"][-1])

        yield on_epoch_end
