"""The live view of a running search: :class:`ProgressView`."""

from __future__ import annotations

from typing import Any

from searchskip.search.evaluations import trial_counts
from searchskip.search.leaderboard import leaderboard

__all__ = ["ProgressView"]


class ProgressView:
    """A rich live view: trials done/total, feasible/infeasible/pruned, best accuracy, ETA, and the
    current top of the leaderboard."""

    TOP = 5

    def __init__(self, study: Any, total: int | None, enabled: bool = True):
        self.study = study
        self.total = total
        self.enabled = enabled
        self.progress = None
        self.live = None
        self.task = None

    def __enter__(self) -> "ProgressView":
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console)
        self.task = self.progress.add_task("search", total=self.total, info="")
        self.live = Live(self._refresh(self.study), console=console, refresh_per_second=4, transient=False)
        self.live.__enter__()
        return self

    def _refresh(self, study: Any):
        """Update the bar from the study and return the view to show (the leaderboard is ranked once)."""
        from rich.console import Group

        from searchskip.search.leaderboard import leaderboard_table

        counts, board = trial_counts(study), leaderboard(study)
        best = f"{100 * board[0].user_attrs['accuracy']:.2f}%" if board else "-"
        self.progress.update(self.task, completed=counts["counted"], info=(
            f"feasible {counts['complete']}  infeasible {counts['infeasible']}  pruned {counts['pruned']}  "
            f"failed {counts['failed']}  best {best}"))
        return Group(self.progress, leaderboard_table(study, rows=board[:self.TOP], title="leaderboard so far"))

    def update(self, study: Any, trial: Any) -> None:
        if self.live is not None:
            self.live.update(self._refresh(study))

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
