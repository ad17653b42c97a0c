"""``hub``: a dataset on the Hugging Face Hub (or in its local cache).

``datasets.load_dataset(data.id, data.name, revision=data.revision, split=<locator>)``,
where the locator is the hub's split name (slices such as ``"train[:1000]"`` work too).
The columns are mapped with ``data.columns``.

Offline (``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1``) only the local cache is
used. The environment variables are honoured even when they were set after
``datasets`` was imported (``datasets`` reads them once, at import). A hub that cannot
be reached raises :class:`~searchskip.errors.OfflineError`, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import datasets

from searchskip.config.job import DataSpec
from searchskip.data.sources.base import RawSplit
from searchskip.errors import ConfigError, DataError, OfflineError, Problem

_TRUE = {"1", "ON", "YES", "TRUE"}


def offline_requested() -> bool:
    """Whether the environment (now) or the libraries (at import) ask for offline mode."""
    env = any(os.environ.get(v, "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))
    try:
        import huggingface_hub.constants as hc

        lib = bool(hc.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        lib = False
    return env or lib or bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))


@contextlib.contextmanager
def _offline_mode(on: bool) -> Iterator[None]:
    """Make ``datasets`` and ``huggingface_hub`` offline for the call when ``on``."""
    if not on:
        yield
        return
    import huggingface_hub.constants as hc

    saved = (hc.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, getattr(datasets.config, "HF_DATASETS_OFFLINE", None))
    hc.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
    datasets.config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, ds_off = saved
        if ds_off is not None:
            datasets.config.HF_DATASETS_OFFLINE = ds_off


def _network_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        types += [OfflineModeIsEnabled, LocalEntryNotFoundError]
    with contextlib.suppress(ImportError):
        import httpx

        types.append(httpx.TransportError)
    with contextlib.suppress(ImportError):
        import requests

        types += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    return tuple(types)


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _not_found_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [datasets.exceptions.DatasetNotFoundError]
    with contextlib.suppress(ImportError):
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

        types += [RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError]
    return tuple(types)


def _offline_error(what: str, offline: bool, e: BaseException) -> OfflineError:
    why = (
        "offline mode is on (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) and it is not in the local cache"
        if offline
        else "the Hugging Face Hub could not be reached"
    )
    return OfflineError(
        f"{what}: cannot load the dataset: {why} ({type(e).__name__}). Connect to the network and "
        "run once to fill the cache (then set HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 to stay offline), "
        "or save the data locally and use data.source: disk (save_to_disk) or parquet"
    )


def load(spec: DataSpec, locator: Any, role: str) -> RawSplit:
    if not spec.id:
        raise ConfigError([Problem(None, "data.id", "the hub source needs a dataset id, e.g. lmms-lab/VQAv2")])
    if not isinstance(locator, str) or not locator:
        raise ConfigError([Problem(None, f"data.splits.{role}", f"must be a hub split name, got {locator!r}")])
    what = f"hub dataset {spec.id!r}" + (f" ({spec.name})" if spec.name else "") + (
        f" at revision {spec.revision}" if spec.revision else ""
    )
    offline = offline_requested()
    try:
        with _offline_mode(offline):
            ds = datasets.load_dataset(spec.id, spec.name, revision=spec.revision, split=locator)
    except Exception as e:
        chain = list(_chain(e))
        network = _network_error_types()
        if any(isinstance(c, network) for c in chain):
            raise _offline_error(what, offline, e) from None
        if offline and isinstance(e, FileNotFoundError):
            raise _offline_error(what, offline, e) from None
        if any(isinstance(c, _not_found_types()) for c in chain):
            if offline:
                raise _offline_error(what, offline, e) from None
            raise DataError(
                f"{what}: not found on the Hugging Face Hub, or private/gated without access "
                f"(check data.id, data.name and data.revision): {e}"
            ) from None
        if isinstance(e, ValueError) and "split" in str(e).lower():
            raise DataError(f"data.splits.{role}: {what} has no split {locator!r}: {e}") from None
        if isinstance(e, (datasets.exceptions.DatasetsError, ValueError, FileNotFoundError)):
            raise DataError(f"{what}: cannot load split {locator!r}: {type(e).__name__}: {e}") from None
        raise
    if not isinstance(ds, datasets.Dataset):  # e.g. an IterableDataset from a streaming config
        raise DataError(f"{what}: split {locator!r} did not load as a datasets.Dataset ({type(ds).__name__})")
    return RawSplit(ds, f"{spec.id}[{locator}]")
