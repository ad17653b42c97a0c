"""Exposure: by default nothing searchskip starts listens on a network socket beyond loopback.

The optuna backend (one or several `searchskip search` processes on a journal file) listens on
nothing at all. A local Ray (2.60) listens on every interface and cannot be told otherwise, so
`backend: ray` without `ray_address` is refused unless `search.ray_allow_network: true`, and
then a warning says so (tests/test_ray_backend.py checks the warning)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


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


def job(tmp_path: Path, **search) -> Path:
    data = yaml.safe_load((REPO / "jobs/demo.yaml").read_text())
    data["outputs"] = str(tmp_path / "out")
    data["data"]["validation_subset"]["size"] = 16
    data["search"].update({"space": str(REPO / "spaces/per-layer.yaml"), **search})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net")


def test_a_local_ray_is_refused_without_the_explicit_option(tmp_path):
    before = set(listening().values())
    out = subprocess.run([sys.executable, "-m", "searchskip", "search", str(job(tmp_path, backend="ray")),
                          "--no-progress"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "search.ray_allow_network" in out.stderr and "every network interface" in out.stderr
    assert "Traceback" not in out.stderr
    assert set(listening().values()) <= before  # nothing was started
    assert not (tmp_path / "out").exists()


def test_the_optuna_backend_listens_on_nothing(tmp_path):
    """Two worker processes searching one journal study: neither ever holds a listening socket."""
    path = job(tmp_path, workers=2, trials=12)
    procs = [subprocess.Popen([sys.executable, "-m", "searchskip", "search", str(path), "--no-progress"], cwd=REPO,
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
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
