"""Measurements that go into the README and issue notes; each writes JSON + Markdown under ``outputs/bench/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

__all__ = ["exit_code", "run_bench", "write_result"]


def write_result(job: Any, name: str, result: dict, markdown: str) -> Path:
    """Write ``<job outputs>/bench/<name>-<job>.{json,md}``, print the Markdown; return the folder."""
    out = Path(job.outputs) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}-{job.name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}-{job.name}.md").write_text(markdown)
    print(markdown)
    return out


def run_bench(job_path: str, name: str, measure: Callable[[Any, Any], dict], markdown: Callable[[dict], str]) -> int:
    """Load the job, ``measure(job, console)``, write the result; exit code 2 with the message
    (no traceback) when the job, its model or its data is bad."""
    from rich.console import Console

    from searchskip.config.loader import load_job

    console = Console(stderr=True)

    def measured() -> None:
        job = load_job(job_path)
        result = measure(job, console)
        write_result(job, name, result, markdown(result))

    return exit_code(console, measured)


def exit_code(console: Any, fn: Callable[[], Any]) -> int:
    """Run ``fn()``: 0, or 2 with the message (no traceback) when it raises a searchskip error (a
    bad job, model or data)."""
    from searchskip.errors import SearchSkipError

    try:
        fn()
    except SearchSkipError as err:
        console.print(f"[red]{err}")
        return 2
    return 0
