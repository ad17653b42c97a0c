"""Exposure: by default nothing searchskip starts listens on a network socket beyond loopback.

The optuna backend (one or several `searchskip search` processes on a journal file) listens on
nothing at all. A local Ray (2.60) listens on every interface and cannot be told otherwise, so
`backend: ray` without `ray_address` is refused unless `search.ray_allow_network: true`, and
then a warning says so (tests/test_ray_backend.py checks the warning)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from helpers import demo_job, searchskip_proc


def listening() -> dict[int, str]:
    """socket inode -> "address:port" of every listening TCP socket on this machine (/proc/net)."""
    out: dict[int, str] = {}
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                address, port = fields[1].rsplit(":", 1)
                out[int(fields[9])] = f"{address}:{int(port, 16)}"
    return out


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net")


def test_a_local_ray_is_refused_without_the_explicit_option(tmp_path, capsys, monkeypatch):
    """In-process, with ``ray.init`` recording its calls: refused before Ray is ever started."""
    import ray

    from searchskip.cli import main

    calls: list[tuple] = []
    monkeypatch.setattr(ray, "init", lambda *a, **k: calls.append((a, k)))
    capsys.readouterr()
    code = main(["search", str(demo_job(tmp_path, backend="ray")), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "search.ray_allow_network" in err and "every network interface" in err
    assert "Traceback" not in err
    assert calls == [], "ray.init was called: a local Ray was started"
    assert not (tmp_path / "out").exists()


def test_the_optuna_backend_listens_on_nothing(tmp_path):
    """Two worker processes searching one journal study: neither ever holds a listening socket."""
    path = demo_job(tmp_path, workers=2, trials=4)
    procs = [searchskip_proc("search", path, "--no-progress", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(2)]
    seen: dict[str, str] = {}
    samples = 0
    while any(p.poll() is None for p in procs):
        sockets = listening()
        for p in procs:
            for inode in socket_inodes(p.pid) & set(sockets):
                seen[sockets[inode]] = str(p.pid)
        samples += 1
        time.sleep(0.05)
    assert [p.returncode for p in procs] == [0, 0]
    assert samples > 10 and seen == {}, seen
