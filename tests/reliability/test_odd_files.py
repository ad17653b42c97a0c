"""Reliability, odd files: every kind of configuration file (job, space, plan) given as something
that is not a small UTF-8 YAML text file.

The odd files (:data:`ODD`): a FIFO (reading it would block until a writer comes), ``/dev/zero``
(endless), a directory, a 2 GiB file, a binary file, a control character, UTF-16, bytes that are
not UTF-8. Each is given, for its kind, to every command that reads that kind (:data:`READERS`:
``validate`` and the verbs that use it for real), in-process, under an alarm, and must:

* exit with code 2 within seconds (never hang, never read without bound);
* print one message naming the file and the rule (no traceback);
* write nothing to ``outputs/``.

A UTF-8 byte order mark is not odd: such a file is accepted by the same commands.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from searchskip import cli
from searchskip.config.yaml_io import read_config_bytes
from searchskip.errors import ConfigError

JOB = "name: t\noutputs: outputs\nsearch:\n  space: spaces/ok.yaml\n  budget: {flops_ratio: 0.8}\n  trials: 1\n"
SPACE = "version: 1\nkind: per_layer\nops: [keep, skip_block]\n"
PLAN = "version: 1\nlayers: {3: skip_ffn}\n"
GOOD = {"job": JOB, "space": SPACE, "plan": PLAN}
FOLDER = {"job": "jobs", "space": "spaces", "plan": "plans"}
FLOPS = ["--prompt-tokens", "10", "--generated-tokens", "2"]
SEARCH = ["--trials", "1", "--no-progress"]
ALARM_S = 60


@dataclass
class Odd:
    id: str
    make: Callable[[Path, str], Path]
    """``make(path, good content)``: put the odd file at ``path`` (or elsewhere) and return where it is."""
    expect: list[str]
    """Fragments of the rule on stderr."""


def _write(content: bytes) -> Callable[[Path, str], Path]:
    def make(path: Path, good: str) -> Path:
        path.write_bytes(content)
        return path

    return make


def _fifo(path: Path, good: str) -> Path:
    os.mkfifo(path)
    return path


def _directory(path: Path, good: str) -> Path:
    path.mkdir()
    return path


def _huge(path: Path, good: str) -> Path:
    with open(path, "wb") as f:  # sparse: 2 GiB claimed, nothing on disk
        f.write(good.encode())
        f.truncate(2 << 30)
    return path


def _encoded(transform: Callable[[str], bytes]) -> Callable[[Path, str], Path]:
    def make(path: Path, good: str) -> Path:
        path.write_bytes(transform(good))
        return path

    return make


ODD = [
    Odd("fifo", _fifo, ["named pipe (FIFO)"]),
    Odd("dev-zero", lambda path, good: Path("/dev/zero"), ["character device"]),
    Odd("directory", _directory, ["is a directory"]),
    Odd("huge", _huge, [f"{2 << 30} bytes", "larger than"]),
    Odd("binary", _write(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x08"), ["is binary", "NUL byte"]),
    Odd("control-character", _encoded(lambda good: good.replace("\n", "\n\x07", 1).encode()),
        ["U+0007", "line 2, column 1", "control character"]),
    Odd("escape-character", _encoded(lambda good: good.replace("\n", " \x1b[31m\n", 1).encode()),
        ["U+001B", "line 1", "control character"]),
    Odd("utf-16", _encoded(lambda good: good.encode("utf-16")), ["UTF-16", "save it as UTF-8"]),
    Odd("not-utf-8", _encoded(lambda good: good.replace("\n", "\xe9\n", 1).encode("latin-1")), ["is not UTF-8"]),
]


def _readers(kind: str, odd: str, job: str) -> list[list[str]]:
    """The commands that read a file of ``kind`` at ``odd``; ``job`` is a job file whose space is ``odd``."""
    if kind == "job":
        return [["validate", odd], ["search", odd, *SEARCH], ["flops", odd, *FLOPS]]
    if kind == "space":
        return [["validate", odd], ["validate", job], ["search", job, *SEARCH]]
    return [["validate", odd], ["flops", "jobs/job.yaml", "--plan", odd, *FLOPS]]


READERS = {kind: len(_readers(kind, "x", "y")) for kind in GOOD}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A working directory with a good job, space and plan; no network; an alarm against hangs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for kind, content in GOOD.items():
        (tmp_path / FOLDER[kind]).mkdir()
        (tmp_path / FOLDER[kind] / ("job.yaml" if kind == "job" else "ok.yaml")).write_text(content)

    def hang(signum, frame):
        raise TimeoutError(f"a command hung for {ALARM_S} s")

    previous = signal.signal(signal.SIGALRM, hang)
    yield tmp_path
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    signal.alarm(ALARM_S)
    try:
        code = cli.main(argv)
    finally:
        signal.alarm(0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("kind", list(GOOD))
@pytest.mark.parametrize("odd", ODD, ids=[o.id for o in ODD])
def test_odd_file_is_refused_by_every_reader(kind: str, odd: Odd, folder: Path, capsys):
    path = odd.make(folder / FOLDER[kind] / "odd.yaml", GOOD[kind])
    shown = str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)
    job = folder / "jobs" / "uses-odd-space.yaml"
    job.write_text(JOB.replace("spaces/ok.yaml", shown))
    for argv in _readers(kind, shown, str(job.relative_to(folder))):
        code, out, err = _run(argv, capsys)
        assert "Traceback" not in out + err, err
        assert code == 2, f"{argv}: exit {code}\n{out}\n{err}"
        assert shown in err, f"{argv}: the file is not named:\n{err}"
        for fragment in odd.expect:
            assert fragment in err, f"{argv}: {fragment!r} missing:\n{err}"
        if argv[1].endswith("uses-odd-space.yaml"):
            assert "search.space" in err, err
        assert not (folder / "outputs").exists(), f"{argv} wrote to outputs/"


@pytest.mark.parametrize("kind", list(GOOD))
def test_a_utf8_byte_order_mark_is_accepted(kind: str, folder: Path, capsys):
    path = folder / FOLDER[kind] / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD[kind].encode())
    job = folder / "jobs" / "uses-bom-space.yaml"
    job.write_text(JOB.replace("spaces/ok.yaml", str(path)))
    argvs = {"job": [["validate", str(path)]], "space": [["validate", str(path)], ["validate", str(job)]],
             "plan": [["validate", str(path)], ["flops", "jobs/job.yaml", "--plan", str(path), *FLOPS]]}[kind]
    for argv in argvs:
        code, out, err = _run(argv, capsys)
        assert code == 0 and "Traceback" not in out + err, f"{argv}: exit {code}\n{out}\n{err}"


def test_a_file_is_never_read_past_the_limit_whatever_size_it_claims(tmp_path):
    """``/proc`` files claim 0 bytes; a file may grow while it is read: the reader stops at the limit."""
    claims_nothing = Path("/proc/self/maps")
    assert os.stat(claims_nothing).st_size == 0 and len(claims_nothing.read_bytes()) > 64
    with pytest.raises(ConfigError, match="larger than the 64 bytes"):
        read_config_bytes(claims_nothing, limit=64)
    small = tmp_path / "small.yaml"
    small.write_bytes(b"x" * 64)
    assert read_config_bytes(small, limit=64) == b"x" * 64
