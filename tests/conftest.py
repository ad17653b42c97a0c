"""Shared fixtures: the repository root and a writer of YAML files in a temporary folder."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# No test may touch the network: hub look-ups fail at once instead of retrying for ~25 s.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if str(REPO_ROOT) not in sys.path:  # run the checkout's package even when it is not installed
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[..., Path]:
    """``write_yaml(text, name="job.yaml")``: write dedented ``text`` under ``tmp_path`` and return the path."""

    def write(text: str, name: str = "job.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-model tests: on a busy 2-core machine the default
    thread pool makes tiny matmuls hundreds of times slower. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on loopback for the module (``tests/postgres_server.py``); skipped, with
    the reason, where none can start."""
    import postgres_server as pg

    why = pg.unavailable()
    if why:
        pytest.skip(why)
    server = pg.start()
    yield server
    server.stop()
