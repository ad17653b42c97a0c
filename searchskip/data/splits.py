"""The train / validation / test splits of a job, each mapped onto the schema.

``data.splits`` maps a role to what the source calls the split. When it has no
``validation``, the validation split is carved out of train **by image**
(``data.carve_validation``, default 10% of train images, seed 0): the unique train
image_ids are sorted, shuffled with ``random.Random(seed)``, and the first
``round(fraction * n_images)`` become validation. ``load_split(spec, "train")`` then
returns train without those images and ``load_split(spec, "validation")`` only them:
the two are complementary, share no image, and are the same on every run.
"""

from __future__ import annotations

import random
from typing import Any, Iterable

import datasets

from searchskip.config.job import SPLIT_ROLES, CarveSpec, DataSpec, SubsetSpec
from searchskip.data.schema import check_images, image_ids, to_schema
from searchskip.data.sources import DEFAULT_SPLITS, MAPPABLE, get_loader
from searchskip.data.subset import select_subset
from searchskip.errors import ConfigError, DataError, Problem

_MAX_LISTED = 10


def resolve_splits(spec: DataSpec) -> dict[str, Any]:
    """``data.splits``, or the source's default roles when it is empty (easy_vqa: train and test)."""
    splits = dict(spec.splits) if spec.splits else dict(DEFAULT_SPLITS.get(spec.source, {}))
    problems = [
        Problem(None, f"data.splits.{role}", f"is not a role (the roles are: {', '.join(SPLIT_ROLES)})")
        for role in splits
        if role not in SPLIT_ROLES
    ]
    if spec.columns and spec.source not in MAPPABLE:
        problems.append(
            Problem(
                None,
                "data.columns",
                f"the {spec.source} source builds the schema itself; data.columns is only for "
                f"{', '.join(sorted(MAPPABLE))}",
            )
        )
    if spec.carve_validation is not None and "validation" in splits:
        problems.append(
            Problem(None, "data.carve_validation", "is set but data.splits.validation is given: use one or the other")
        )
    carve = carve_spec(spec)
    if not 0.0 < carve.fraction < 1.0:
        problems.append(Problem(None, "data.carve_validation.fraction", f"must be between 0 and 1, got {carve.fraction}"))
    if problems:
        raise ConfigError(problems)
    return splits


def carve_spec(spec: DataSpec) -> CarveSpec:
    return spec.carve_validation if spec.carve_validation is not None else CarveSpec()


def carved_image_ids(train_image_ids: Iterable[str], carve: CarveSpec) -> set[str]:
    """The image_ids that form the carved validation split (deterministic, see the module docstring)."""
    unique = sorted(set(train_image_ids))
    random.Random(carve.seed).shuffle(unique)
    return set(unique[: round(carve.fraction * len(unique))])


def _load_raw_role(spec: DataSpec, splits: dict[str, Any], role: str) -> datasets.Dataset:
    raw = get_loader(spec.source)(spec, splits[role], role)
    columns = spec.columns if spec.source in MAPPABLE else {}
    return to_schema(raw.dataset, columns, raw.origin)


def _select_by_image(ds: datasets.Dataset, ids: set[str], keep: bool) -> datasets.Dataset:
    rows = [i for i, iid in enumerate(image_ids(ds)) if (iid in ids) == keep]
    return ds.select(rows)


def _missing_role(role: str, spec: DataSpec, splits: dict[str, Any]) -> DataError:
    have = ", ".join(sorted(splits)) or "none"
    hint = " (or give data.splits.train to carve validation from)" if role == "validation" else ""
    return DataError(f"data.splits.{role}: no {role} split for source {spec.source} (roles given: {have}){hint}")


def load_split(spec: DataSpec, role: str, *, check_disjoint: bool = True) -> datasets.Dataset:
    """The split playing ``role`` (train/validation/test), in the schema.

    With ``check_disjoint``, loading validation also loads test (when there is one)
    and raises :class:`DataError` if they share an image.
    """
    if role not in SPLIT_ROLES:
        raise DataError(f"unknown split role {role!r} (the roles are: {', '.join(SPLIT_ROLES)})")
    splits = resolve_splits(spec)
    carving = "validation" not in splits
    carve = carve_spec(spec)

    if role == "validation" and carving:
        if carve.source not in splits:
            raise _missing_role("validation", spec, splits)
        source = _load_raw_role(spec, splits, carve.source)
        ids = carved_image_ids(image_ids(source), carve)
        if not ids:
            raise DataError(
                f"data.carve_validation.fraction: {carve.fraction} of the {len(set(image_ids(source)))} "
                f"{carve.source} images rounds to no image; raise the fraction"
            )
        ds = _select_by_image(source, ids, keep=True)
    elif role in splits:
        ds = _load_raw_role(spec, splits, role)
        if role == carve.source and carving:
            ids = carved_image_ids(image_ids(ds), carve)
            ds = _select_by_image(ds, ids, keep=False)
            if len(ds) == 0:
                raise DataError(f"data.carve_validation.fraction: {carve.fraction} leaves no {role} image")
    else:
        raise _missing_role(role, spec, splits)

    if role == "validation" and check_disjoint and "test" in splits:
        test = load_split(spec, "test", check_disjoint=False)
        assert_disjoint(ds, test, ("validation", "test"))
    return ds


def _ids(x: datasets.Dataset | Iterable[str]) -> set[str]:
    return set(image_ids(x)) if isinstance(x, datasets.Dataset) else {str(i) for i in x}


def assert_disjoint(
    a: datasets.Dataset | Iterable[str],
    b: datasets.Dataset | Iterable[str],
    names: tuple[str, str] = ("a", "b"),
) -> None:
    """Raise :class:`DataError` when two splits (datasets or image_id collections) share an image_id."""
    shared = sorted(_ids(a) & _ids(b))
    if shared:
        more = len(shared) - _MAX_LISTED
        raise DataError(
            f"the {names[0]} and {names[1]} splits share {len(shared)} image(s): image_id "
            + ", ".join(shared[:_MAX_LISTED])
            + (f" ... and {more} more" if more > 0 else "")
            + ". Scores on overlapping splits are not independent: give disjoint splits, and make sure "
            "image_id identifies a picture across splits (map a suitable column with data.columns.image_id)"
        )


def check_splits(spec: DataSpec) -> dict[str, int]:
    """Load every role that can be built, check that no two share an image; return role -> size."""
    splits = resolve_splits(spec)
    loaded: dict[str, datasets.Dataset] = {}
    for role in SPLIT_ROLES:
        if role in splits or (role == "validation" and carve_spec(spec).source in splits):
            loaded[role] = load_split(spec, role, check_disjoint=False)
    roles = list(loaded)
    for i, r1 in enumerate(roles):
        for r2 in roles[i + 1 :]:
            assert_disjoint(loaded[r1], loaded[r2], (r1, r2))
    return {r: len(d) for r, d in loaded.items()}


def subset_spec(spec: DataSpec, role: str) -> SubsetSpec:
    """``data.validation_subset`` / ``data.test_subset``; train is used whole."""
    if role == "validation":
        return spec.validation_subset
    if role == "test":
        return spec.test_subset
    return SubsetSpec()


def load_eval_split(spec: DataSpec, role: str, *, check: bool = False) -> datasets.Dataset:
    """:func:`load_split` then :func:`select_subset` with the role's subset settings.

    With ``check``, every image of the result is opened (:func:`check_images`) so that
    an unreadable one is reported before any evaluation starts.
    """
    ds = select_subset(load_split(spec, role), subset_spec(spec, role))
    if check:
        check_images(ds)
    return ds
