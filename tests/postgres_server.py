"""A throwaway PostgreSQL server on loopback for storage tests (Debian's ``postgresql`` package).

:func:`start` runs ``initdb`` into a temporary folder (trust authentication, user ``searchskip``)
and ``pg_ctl start`` with ``listen_addresses=127.0.0.1`` on a free port and its Unix socket in
that folder, as the ``postgres`` system user when the tests run as root (PostgreSQL refuses to
run as root). :func:`unavailable` says why a server cannot be started here, or ``None``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER = "searchskip"


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def unavailable() -> str | None:
    """Why no server can be started here (``None``: it can)."""
    if _bin_dir() is None:
        return "PostgreSQL is not installed (Debian: apt-get install postgresql); .ci/run installs it"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without `runuser`, and PostgreSQL refuses to run as root"
    try:
        import psycopg  # noqa: F401  (SQLAlchemy's default driver for postgresql:// URLs)
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    folder: Path
    port: int
    run_as: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def create_database(self, name: str) -> str:
        """A fresh database; returns its URL."""
        subprocess.run([*self.run_as, str(_bin_dir() / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", USER, name], check=True, capture_output=True, text=True)
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run([*self.run_as, str(_bin_dir() / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast",
                        "stop"], capture_output=True, text=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def start() -> Server:
    """Start a server (see the module doc); the caller stops it with :meth:`Server.stop`."""
    bin_dir = _bin_dir()
    folder = Path(tempfile.mkdtemp(prefix="searchskip-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    folder.chmod(0o700)
    data = folder / "data"
    subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, text=True)
    port = _free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c max_connections=100"
    subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"),
                    "-w", "start"], check=True, capture_output=True, text=True)
    return Server(folder=folder, port=port, run_as=run_as)
