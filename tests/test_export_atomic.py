"""Atomic export folders: manifest round trip, exceptions, leftovers, and kills at every step."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from searchskip.errors import SearchSkipError
from searchskip.export import atomic
from searchskip.export import manifest as manifest_module
from searchskip.export.atomic import (
    MANIFEST,
    ManifestError,
    atomic_directory,
    check_manifest,
    cleanup_leftovers,
    verify_manifest,
    write_manifest,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

OLD = {
    "plan.yaml": "version: 1\nlayers: {3: skip_block}\n",
    "metrics.json": '{"accuracy": 0.5}\n',
    "model/model.safetensors": "old weights " * 500,
    "model/config.json": '{"old": true}\n',
    "report.md": "# old report\n",
}
NEW = {
    "plan.yaml": "version: 1\nlayers: {5: skip_ffn}\n",
    "metrics.json": '{"accuracy": 0.7}\n',
    "model/config.json": '{"new": true}\n',
    "model/model.safetensors": "new weights " * 700,
    "finetune.yaml": "lr: 0.0001\n",
}


def write_files(folder: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def read_files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` but the manifest, by relative POSIX path."""
    return {
        p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST
    }


def export(target: Path, files: dict[str, str]) -> None:
    with atomic_directory(target) as tmp:
        write_files(tmp, files)


def leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


@pytest.fixture
def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


# --------------------------------------------------------------------------- manifest


def test_round_trip_replace_and_tamper(tmp_path: Path) -> None:
    target = tmp_path / "out" / "export"  # parents do not exist yet
    export(target, OLD)
    assert read_files(target) == OLD
    assert verify_manifest(target) == []
    check_manifest(target)
    assert leftovers(target) == []

    export(target, NEW)  # replaces the whole folder: no file of OLD survives
    assert read_files(target) == NEW
    assert verify_manifest(target) == []
    assert leftovers(target) == []

    weights = target / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 1  # same size, one bit flipped
    weights.write_bytes(bytes(data))
    problems = verify_manifest(target)
    assert len(problems) == 1 and problems[0].startswith("model/model.safetensors:")
    assert "sha256" in problems[0]

    (target / "plan.yaml").unlink()
    (target / "model" / "extra.bin").write_bytes(b"x")
    with open(target / "metrics.json", "a", encoding="utf-8") as f:
        f.write(" ")
    problems = verify_manifest(target)
    assert any(p.startswith("plan.yaml:") and "missing" in p for p in problems)
    assert any(p.startswith("model/extra.bin:") and "not listed" in p for p in problems)
    assert any(p.startswith("metrics.json:") and "size" in p for p in problems)
    assert len(problems) == 4

    with pytest.raises(ManifestError) as info:
        check_manifest(target)
    assert isinstance(info.value, SearchSkipError) and info.value.exit_code == 2
    message = str(info.value)
    assert str(target) in message
    for rel in ("plan.yaml", "model/extra.bin", "metrics.json", "model/model.safetensors"):
        assert rel in message


def test_manifest_format(tmp_path: Path) -> None:
    write_files(tmp_path, {"b.txt": "bbb", "a/z.txt": "zz", "a/sub/manifest.json": "{}"})
    manifest = write_manifest(tmp_path)
    on_disk = (tmp_path / MANIFEST).read_text(encoding="utf-8")
    assert json.loads(on_disk) == manifest
    assert on_disk == json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    assert manifest["version"] == 1
    assert list(manifest["files"]) == ["a/sub/manifest.json", "a/z.txt", "b.txt"]  # sorted, not itself
    assert manifest["files"]["b.txt"] == {"sha256": hashlib.sha256(b"bbb").hexdigest(), "bytes": 3}
    assert verify_manifest(tmp_path) == []
    assert write_manifest(tmp_path) == manifest  # rewriting does not list the old manifest


def test_hashing_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(10_000) * 3 + b"tail"
    (tmp_path / "big.bin").write_bytes(data)
    monkeypatch.setattr(manifest_module, "_CHUNK", 4096)  # many chunks, the last one partial
    manifest = write_manifest(tmp_path)
    assert manifest["files"]["big.bin"] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_verify_without_or_with_broken_manifest(tmp_path: Path) -> None:
    write_files(tmp_path, {"a.txt": "a"})
    assert verify_manifest(tmp_path) == [f"{MANIFEST}: missing"]
    (tmp_path / MANIFEST).write_text("{not json", encoding="utf-8")
    [problem] = verify_manifest(tmp_path)
    assert problem.startswith(f"{MANIFEST}: unreadable")
    (tmp_path / MANIFEST).write_text(json.dumps({"version": 1, "files": {"../a.txt": {}}}), encoding="utf-8")
    problems = verify_manifest(tmp_path)
    assert any("../a.txt" in p and "not a valid" in p for p in problems)
    assert any(p.startswith("a.txt:") and "not listed" in p for p in problems)
    with pytest.raises(ManifestError, match="missing"):
        check_manifest(tmp_path / "nowhere")


# --------------------------------------------------------------------------- exceptions


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_exception_in_block_keeps_target(tmp_path: Path, error: type[BaseException]) -> None:
    target = tmp_path / "export"
    export(target, OLD)
    with pytest.raises(error):
        with atomic_directory(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.startswith(".export.tmp-")
            write_files(tmp, NEW)
            raise error("stop")
    assert read_files(target) == OLD
    assert verify_manifest(target) == []
    assert leftovers(target) == []

    fresh = tmp_path / "fresh"
    with pytest.raises(error):
        with atomic_directory(fresh) as tmp:
            write_files(tmp, NEW)
            raise error("stop")
    assert not fresh.exists() and leftovers(fresh) == []


def test_failed_swap_puts_previous_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "export"
    export(target, OLD)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".export.tmp-"):
            raise OSError("disk gone")
        return real_rename(src, dst)

    monkeypatch.setattr(atomic, "_EXCHANGE", False)  # the two-rename fallback
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="disk gone"):
        export(target, NEW)
    monkeypatch.undo()
    assert read_files(target) == OLD
    assert verify_manifest(target) == []
    assert leftovers(target) == []


def test_target_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "export"
    target.write_text("not a folder", encoding="utf-8")
    with pytest.raises(SearchSkipError, match="not a folder"):
        export(target, NEW)
    assert target.read_text(encoding="utf-8") == "not a folder"


def test_kept_entries_are_carried_only_by_a_writer_that_keeps_them(tmp_path: Path) -> None:
    """A folder's manifest says finetune/ is kept; a write that does not keep finetune/ (another
    version, another writer) must not delete it: refused, naming it."""
    from searchskip.export.owner import ReplaceRefused

    target = tmp_path / "export"
    with atomic_directory(target, kind="export", keep={"finetune": ["model"]}) as tmp:
        write_files(tmp, OLD)
    write_files(target, {"finetune/metrics.json": "{}"})
    assert verify_manifest(target) == []
    with pytest.raises(ReplaceRefused, match="finetune/"):
        with atomic_directory(target, kind="export") as tmp:
            write_files(tmp, OLD)
    assert read_files(target) == {**OLD, "finetune/metrics.json": "{}"} and leftovers(target) == []


# --------------------------------------------------------------------------- leftovers


def test_cleanup_leftovers_by_owner(tmp_path: Path, dead_pid: int) -> None:
    target = tmp_path / "export"
    export(target, OLD)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_tmp = tmp_path / f".export.tmp-{dead_pid}-ab12"
        live_tmp = tmp_path / f".export.tmp-{sleeper.pid}-cd34"
        own_tmp = tmp_path / f".export.tmp-{os.getpid()}-ef56"  # not used by any atomic_directory
        dead_old = tmp_path / f".export.old-{dead_pid}-0a"
        dead_trash = tmp_path / f".export.trash-{dead_pid}-0b"
        other = tmp_path / f".exportx.tmp-{dead_pid}-0c"  # another target's leftover
        for folder in (dead_tmp, live_tmp, own_tmp, dead_old, dead_trash, other):
            write_files(folder, {"half/written.bin": "x"})
        removed = cleanup_leftovers(target)
        assert sorted(removed) == sorted([dead_tmp, own_tmp, dead_old, dead_trash])
        assert leftovers(target) == [live_tmp.name]
        assert other.exists()
        assert read_files(target) == OLD

        export(target, NEW)  # a new export leaves the live process's folder alone too
        assert leftovers(target) == [live_tmp.name]
        assert read_files(target) == NEW
    finally:
        sleeper.kill()
        sleeper.wait()
    assert cleanup_leftovers(target) == [live_tmp]
    assert leftovers(target) == []


def test_cleanup_restores_newest_old_when_target_missing(tmp_path: Path, dead_pid: int) -> None:
    target = tmp_path / "export"
    older = tmp_path / f".export.old-{dead_pid}-01"
    newer = tmp_path / f".export.old-{dead_pid}-02"
    export(older, OLD)
    export(newer, NEW)
    now = time.time()
    os.utime(older, (now - 100, now - 100))
    os.utime(newer, (now, now))
    removed = cleanup_leftovers(target)
    assert sorted(removed) == sorted([older, newer])
    assert read_files(target) == NEW
    assert verify_manifest(target) == []
    assert leftovers(target) == []
    assert cleanup_leftovers(tmp_path / "no" / "parent") == []


# --------------------------------------------------------------------------- kills

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    sys.path.insert(0, sys.argv[1])
    from searchskip.export import atomic

    target, kill_at, files = sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    atomic._EXCHANGE = sys.argv[5] == "exchange"
    keep = json.loads(sys.argv[6]) if len(sys.argv) > 6 else None
    count = 0

    def point(name):
        global count
        count += 1
        if count == kill_at:
            print(name, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    atomic._checkpoint = point
    with atomic.atomic_directory(target, keep=keep) as tmp:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            point("wrote " + rel)
    print("done", count, flush=True)
    """
)

# Every step of an export of NEW over OLD, in order; the child is killed after the k-th.
# "exchange": one renameat2(RENAME_EXCHANGE) swap; "renames": the two-rename fallback.
_WRITE = ["tmp-created"] + [f"wrote {rel}" for rel in NEW] + ["manifest-hashed"] * len(NEW) + ["manifest-written",
                                                                                                 "synced"]
POINTS_BY_MODE = {
    "exchange": _WRITE + ["exchanged", "old-trashed", "old-removed"],
    "renames": _WRITE + ["target-moved", "tmp-moved", "old-trashed", "old-removed"],
}
NEW_FROM = {"exchange": POINTS_BY_MODE["exchange"].index("exchanged"),
            "renames": POINTS_BY_MODE["renames"].index("tmp-moved")}  # from here on, the new export is in place
POINTS = POINTS_BY_MODE["renames"]
CASES = [(mode, k) for mode, points in POINTS_BY_MODE.items() for k in range(1, len(points) + 1)]


def run_child(target: Path, kill_at: int, mode: str = "renames", files: dict[str, str] = NEW,
              keep: dict | None = None) -> subprocess.CompletedProcess:
    keep_args = [json.dumps(keep)] if keep is not None else []
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(REPO_ROOT), str(target), str(kill_at), json.dumps(files), mode, *keep_args],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )


@pytest.mark.parametrize("mode", list(POINTS_BY_MODE))
def test_child_without_kill_passes_every_point(tmp_path: Path, mode: str) -> None:
    target = tmp_path / "export"
    export(target, OLD)
    done = run_child(target, 0, mode)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["done", str(len(POINTS_BY_MODE[mode]))]
    assert read_files(target) == NEW and verify_manifest(target) == []
    assert leftovers(target) == []


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("mode, kill_at", CASES, ids=[f"{m}-{k}-{POINTS_BY_MODE[m][k - 1]}" for m, k in CASES])
def test_killed_export_leaves_a_complete_one(tmp_path: Path, mode: str, kill_at: int) -> None:
    points = POINTS_BY_MODE[mode]
    assert len(points) >= 10
    target = tmp_path / "export"
    export(target, OLD)
    done = run_child(target, kill_at, mode)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.strip() == points[kill_at - 1]
    expected = NEW if kill_at - 1 >= NEW_FROM[mode] else OLD

    # What the kill left, before any recovery.
    if points[kill_at - 1] == "target-moved":  # only the two-rename fallback has this moment
        assert not target.exists()
        assert any(".export.old-" in name for name in leftovers(target))
    else:
        assert read_files(target) == expected
        assert verify_manifest(target) == []
    if kill_at - 1 < NEW_FROM[mode]:
        assert any(".export.tmp-" in name for name in leftovers(target))
    if points[kill_at - 1] != "old-removed":
        assert leftovers(target), "the kill should have left something to clean up"

    # The next run's cleanup: the target is whole (old or new, never a mix) and verifies.
    cleanup_leftovers(target)
    assert read_files(target) == expected
    assert verify_manifest(target) == []
    assert leftovers(target) == []

    # And a fresh export over it works.
    third = {"plan.yaml": "version: 1\n", "model/model.safetensors": "third"}
    export(target, third)
    assert read_files(target) == third and verify_manifest(target) == []
    assert leftovers(target) == []


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_fresh_export_cleans_what_a_kill_left(tmp_path: Path) -> None:
    target = tmp_path / "export"
    export(target, OLD)
    done = run_child(target, POINTS.index("target-moved") + 1, "renames")  # between the two renames
    assert done.returncode == -signal.SIGKILL
    assert not target.exists()
    export(target, {"a.txt": "a"})  # atomic_directory recovers first, then replaces
    assert read_files(target) == {"a.txt": "a"} and verify_manifest(target) == []
    assert leftovers(target) == []


# What a fine-tune adds to an export: kept across a re-export whose model/ is unchanged.
KEEP = {"finetune": ["model"]}
KEPT = {"finetune/model/model.safetensors": "tuned weights " * 300, "finetune/metrics.json": '{"after": 0.9}\n'}
SAME_MODEL = {**NEW, "model/model.safetensors": OLD["model/model.safetensors"], "model/config.json": OLD["model/config.json"]}


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("mode", list(POINTS_BY_MODE))
def test_a_kill_at_any_step_keeps_the_kept_entries(tmp_path: Path, mode: str) -> None:
    """A re-export that carries finetune/ over, killed at each of its steps: after the next run's
    cleanup the target verifies, and finetune/ is there, byte for byte."""
    def old_with_fine_tune(target: Path) -> None:
        with atomic_directory(target, keep=KEEP) as tmp:
            write_files(tmp, OLD)
        write_files(target, KEPT)

    probe = tmp_path / "probe" / "export"
    old_with_fine_tune(probe)
    done = run_child(probe, 0, mode, SAME_MODEL, KEEP)
    assert done.returncode == 0, done.stderr
    steps = int(done.stdout.split()[-1])
    assert read_files(probe) == {**SAME_MODEL, **KEPT} and verify_manifest(probe) == []
    for kill_at in range(1, steps + 1):
        target = tmp_path / f"kill-{kill_at}" / "export"
        old_with_fine_tune(target)
        done = run_child(target, kill_at, mode, SAME_MODEL, KEEP)
        assert done.returncode == -signal.SIGKILL, done.stderr
        cleanup_leftovers(target)
        files = read_files(target)
        assert {rel: files.get(rel) for rel in KEPT} == KEPT, (kill_at, done.stdout)
        assert files in ({**OLD, **KEPT}, {**SAME_MODEL, **KEPT}) and verify_manifest(target) == []
        assert leftovers(target) == []
