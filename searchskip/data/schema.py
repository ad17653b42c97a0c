"""The one in-memory VQA schema every data source is mapped onto (modelled on VQAv2).

=================  ======================  ==================================================
field              feature                 meaning
=================  ======================  ==================================================
``question_id``    ``Value("string")``     unique id of the question (ids are always strings)
``image``          ``Image()``             the picture, decoded lazily to ``PIL.Image``
``question``       ``Value("string")``     the question text
``answers``        ``List(string)``        the human answers (VQAv2 has 10 per question)
``question_type``  ``Value("string")``     e.g. ``"what color"``; ``"unknown"`` when absent
``answer_type``    ``Value("string")``     ``"yes/no"``, ``"number"`` or ``"other"``
``image_id``       ``Value("string")``     identifies the picture *across splits*
=================  ======================  ==================================================

:func:`to_schema` maps a :class:`datasets.Dataset` from any source onto it, using the
job's ``data.columns`` mapping (schema field -> source column). :func:`check_images`
opens the pictures and reports every unreadable one together.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any, Mapping, Sequence

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from searchskip.config.job import SCHEMA_FIELDS
from searchskip.errors import ConfigError, DataError, Problem

FEATURES = datasets.Features(
    {
        "question_id": datasets.Value("string"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answers": datasets.List(datasets.Value("string")),
        "question_type": datasets.Value("string"),
        "answer_type": datasets.Value("string"),
        "image_id": datasets.Value("string"),
    }
)
"""The features of every dataset :func:`to_schema` returns, in this column order."""

assert tuple(FEATURES) == SCHEMA_FIELDS, "schema.FEATURES must follow config.job.SCHEMA_FIELDS"

REQUIRED_FIELDS = ("question_id", "image", "question", "answers", "image_id")
"""Fields a source must provide (directly or through ``data.columns``)."""

UNKNOWN_QUESTION_TYPE = "unknown"
"""``question_type`` of questions whose source has none."""

_YES_NO = frozenset({"yes", "no"})
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_MAX_LISTED = 10


def derive_answer_type(answers: Sequence[str]) -> str:
    """``"yes/no"`` when every answer is yes/no, ``"number"`` when every answer is numeric, else ``"other"``."""
    norm = [a.strip().lower() for a in answers]
    if norm and all(a in _YES_NO for a in norm):
        return "yes/no"
    if norm and all(_NUMBER.match(a) for a in norm):
        return "number"
    return "other"


def _listing(items: Sequence[Any], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(str(x) for x in items[:limit])
    more = len(items) - limit
    return shown + (f" ... and {more} more" if more > 0 else "")


def _check_columns_keys(columns: Mapping[str, str]) -> None:
    problems = []
    for key, value in columns.items():
        if key not in SCHEMA_FIELDS:
            problems.append(
                Problem(None, f"data.columns.{key}", f"is not a schema field (the fields are: {', '.join(SCHEMA_FIELDS)})")
            )
        elif not isinstance(value, str) or not value:
            problems.append(Problem(None, f"data.columns.{key}", f"must name a source column, got {value!r}"))
    if problems:
        raise ConfigError(problems)


def resolve_columns(column_names: Sequence[str], columns: Mapping[str, str] | None, origin: str) -> dict[str, str | None]:
    """Map every schema field to the source column that holds it (``None``: absent and optional).

    Raises :class:`DataError` naming ``origin``, every missing field, the columns that
    exist and how to fix it.
    """
    columns = dict(columns or {})
    _check_columns_keys(columns)
    present = set(column_names)
    resolved: dict[str, str | None] = {}
    problems: list[str] = []
    for field in SCHEMA_FIELDS:
        if field in columns:
            src = columns[field]
            if src not in present:
                problems.append(f"data.columns.{field} maps '{field}' to column '{src}', which {origin} does not have")
                continue
            resolved[field] = src
        elif field in present:
            resolved[field] = field
        elif field in REQUIRED_FIELDS:
            problems.append(f"needs a column for '{field}' (map one with data.columns.{field})")
        else:
            resolved[field] = None
    if problems:
        lines = [f"{origin}: does not fit the VQA schema:"]
        lines += [f"  - {p}" for p in problems]
        lines.append(f"  the columns it has: {', '.join(column_names) if column_names else '(none)'}")
        raise DataError("\n".join(lines))
    return resolved


def _combine(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _as_strings(arr: pa.Array, field: str, origin: str, qids: pa.Array | None) -> pa.Array:
    """Cast a column to strings; nulls are an error naming the rows."""
    if arr.null_count:
        rows = [i for i, v in enumerate(arr.is_null().to_pylist()) if v]
        where = _rows(rows, qids)
        raise DataError(f"{origin}: '{field}' is empty for {len(rows)} question(s): {where}")
    if pa.types.is_string(arr.type):
        return arr
    if pa.types.is_large_string(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_string_view(arr.type):
        return pc.cast(arr, pa.string())
    return pa.array([str(v) for v in arr.to_pylist()], pa.string())


def _rows(rows: Sequence[int], qids: pa.Array | None) -> str:
    if qids is None:
        return "rows " + _listing(list(rows))
    return "question_id " + _listing([qids[i].as_py() for i in rows])


def _answer_list(value: Any) -> list[str] | None:
    """One row's answers as a list of strings (``None`` when there are none)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        # a VQAv2 answer dict, or HF's columnar form of a sequence of dicts: {"answer": [...], ...}
        if "answer" not in value:
            return None
        inner = value["answer"]
        return _answer_list(inner)
    if isinstance(value, (list, tuple)):
        out: list[str] = []
        for item in value:
            if isinstance(item, Mapping):
                if item.get("answer") is None:
                    return None
                out.append(str(item["answer"]))
            elif item is None:
                return None
            else:
                out.append(str(item))
        return out
    if isinstance(value, (int, float, bool)):
        return [str(value)]
    return None


def _answers(arr: pa.Array, origin: str, qids: pa.Array) -> tuple[pa.Array, list[list[str]] | None]:
    """Answers as ``list<string>``; also the Python lists when they were built (to derive answer types)."""
    t = arr.type
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_string(t.value_type) and arr.null_count == 0:
        lengths = pc.list_value_length(arr)
        if pc.min(lengths).as_py() not in (None, 0) and arr.flatten().null_count == 0:
            return arr.cast(pa.list_(pa.string())), None
    values = arr.to_pylist()
    lists: list[list[str]] = []
    bad: list[int] = []
    for i, v in enumerate(values):
        got = _answer_list(v)
        if not got:
            bad.append(i)
            lists.append([])
        else:
            lists.append(got)
    if bad:
        raise DataError(
            f"{origin}: 'answers' must be an answer string, a list of strings or a list of "
            f"{{'answer': ...}} dicts with at least one answer; not so for {len(bad)} question(s): "
            f"{_rows(bad, qids)} (first value: {values[bad[0]]!r})"
        )
    return pa.array(lists, pa.list_(pa.string())), lists


def _missing_paths(bytes_null: list[bool], paths: list[str | None]) -> list[int]:
    """Rows whose image is given only by a local path that does not exist (each path checked once)."""
    seen: dict[str, bool] = {}
    missing = []
    for i, (no_bytes, path) in enumerate(zip(bytes_null, paths)):
        if not no_bytes or path is None or "://" in path or "::" in path:
            continue
        ok = seen.get(path)
        if ok is None:
            ok = seen[path] = os.path.exists(path)
        if not ok:
            missing.append(i)
    return missing


_IMAGE_STORAGE = FEATURES.arrow_schema.field("image").type


def _image_storage(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Cast to the Image storage chunk by chunk, so image bytes of a memory-mapped table are not copied."""
    chunks = []
    for chunk in col.chunks:
        if chunk.offset and pa.types.is_struct(chunk.type):
            chunk = pa.concat_arrays([chunk])  # Image.cast_storage reads struct children without the offset
        chunks.append(datasets.Image().cast_storage(chunk))
    return pa.chunked_array(chunks, type=_IMAGE_STORAGE)


def _image(col: pa.ChunkedArray, origin: str, qids: pa.Array) -> pa.ChunkedArray:
    try:
        storage = _image_storage(col)
    except Exception as e:  # pyarrow raises several types for impossible casts
        raise DataError(
            f"{origin}: the image column has type {col.type}, which is not an image "
            f"(expected image bytes, a file path or a {{bytes, path}} struct): {e}"
        ) from None
    bytes_null: list[bool] = []
    paths: list[str | None] = []
    for chunk in storage.chunks:
        b, p = chunk.flatten()  # children with the chunk's offset and nulls applied
        bytes_null += b.is_null().to_pylist()
        paths += p.to_pylist()
    rows = [i for i, (no_bytes, path) in enumerate(zip(bytes_null, paths)) if no_bytes and path is None]
    if rows:
        raise DataError(f"{origin}: no image for {len(rows)} question(s): {_rows(rows, qids)}")
    missing = _missing_paths(bytes_null, paths)
    if missing:
        shown = [f"{qids[i].as_py()} ({paths[i]})" for i in missing[:_MAX_LISTED]]
        more = len(missing) - len(shown)
        raise DataError(
            f"{origin}: image file not found for {len(missing)} question(s): question_id "
            + ", ".join(shown)
            + (f" ... and {more} more" if more > 0 else "")
        )
    return storage


def _arrow_table(ds: datasets.Dataset, names: Sequence[str]) -> pa.Table:
    sub = ds.select_columns(list(names)).with_format("arrow")
    return sub[:] if len(sub) else sub.data.table.slice(0, 0)


def dataset_from_arrays(arrays: Mapping[str, Any]) -> datasets.Dataset:
    """A schema dataset from one array/list per field (image: paths, bytes or ``{bytes, path}``).

    The images are not read: the ``image`` column only records where they are, and
    ``datasets`` decodes each one when it is accessed.
    """
    cols = []
    for field in SCHEMA_FIELDS:
        value = arrays[field]
        if field == "image":
            if not isinstance(value, (pa.Array, pa.ChunkedArray)):
                value = pa.array(value)
            if isinstance(value, pa.Array):
                value = pa.chunked_array([value])
            cols.append(value if value.type == _IMAGE_STORAGE else _image_storage(value))
        else:
            if not isinstance(value, (pa.Array, pa.ChunkedArray)):
                value = pa.array(value, FEATURES.arrow_schema.field(field).type)
            cols.append(value)
    table = pa.Table.from_arrays(cols, schema=FEATURES.arrow_schema)
    return datasets.Dataset(datasets.table.InMemoryTable(table), info=datasets.DatasetInfo(features=FEATURES.copy()))


def _conforms_without_nulls(ds: datasets.Dataset) -> bool:
    """Whether ``ds`` already has the schema's features and no empty value (checked on its whole table)."""
    if not all(f in ds.features and ds.features[f] == FEATURES[f] for f in SCHEMA_FIELDS):
        return False
    table = ds.data
    for f in SCHEMA_FIELDS:
        if table.column(f).null_count:
            return False
    answers = table.column("answers")
    for chunk in answers.chunks:
        if len(chunk) and (chunk.flatten().null_count or pc.min(pc.list_value_length(chunk)).as_py() == 0):
            return False
    for chunk in table.column("image").chunks:
        b, p = chunk.flatten()
        if len(chunk) and pc.any(pc.and_(b.is_null(), p.is_null())).as_py():
            return False
    return True


def to_schema(ds: datasets.Dataset, columns: Mapping[str, str] | None = None, origin: str = "dataset") -> datasets.Dataset:
    """Return ``ds`` with exactly the schema's columns, in order, with :data:`FEATURES`.

    ``columns`` maps a schema field to the source column holding it (unmapped fields
    are looked up by their own name). ``origin`` names the dataset (file, folder or
    hub id) in error messages. Coercions: ids and questions become strings; answers
    given as one string, a list of strings or VQAv2's list of ``{"answer": ...}``
    dicts become a list of strings; a missing ``question_type`` is ``"unknown"``; a
    missing ``answer_type`` is derived by :func:`derive_answer_type`. Images are not
    decoded here, but a row without an image, or whose image is a local path that
    does not exist, is an error (see :func:`check_images` to open them all).
    """
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"{origin}: expected one split (a datasets.Dataset), got {type(ds).__name__}")
    resolved = resolve_columns(ds.column_names, columns, origin)
    identity = all(src == field for field, src in resolved.items())
    if identity and _conforms_without_nulls(ds):
        # already in the schema (e.g. a saved output of this function): keep it as it is,
        # memory-mapped, only dropping extra columns or reordering
        return ds if ds.column_names == list(SCHEMA_FIELDS) else ds.select_columns(list(SCHEMA_FIELDS))

    sources = sorted({src for src in resolved.values() if src is not None})
    table = _arrow_table(ds, sources)
    non_image = {src for field, src in resolved.items() if src is not None and field != "image"}
    col = {name: _combine(table.column(name)) for name in non_image}

    qids = _as_strings(col[resolved["question_id"]], "question_id", origin, None)
    out: dict[str, pa.Array] = {"question_id": qids}
    out["image"] = _image(table.column(resolved["image"]), origin, qids)
    out["question"] = _as_strings(col[resolved["question"]], "question", origin, qids)
    answers, answer_lists = _answers(col[resolved["answers"]], origin, qids)
    out["answers"] = answers
    n = len(qids)

    if resolved["question_type"] is None:
        out["question_type"] = pa.array([UNKNOWN_QUESTION_TYPE] * n, pa.string())
    else:
        qt = col[resolved["question_type"]]
        if qt.null_count:
            qt = pc.fill_null(qt.cast(pa.string()) if not pa.types.is_string(qt.type) else qt, UNKNOWN_QUESTION_TYPE)
        out["question_type"] = _as_strings(qt, "question_type", origin, qids)

    at_src = resolved["answer_type"]
    at = col[at_src] if at_src is not None else None
    if at is None or at.null_count:
        if answer_lists is None:
            answer_lists = answers.to_pylist()
        derived = [derive_answer_type(a) for a in answer_lists]
        if at is None:
            out["answer_type"] = pa.array(derived, pa.string())
        else:
            given = at.to_pylist()
            out["answer_type"] = pa.array([str(g) if g is not None else d for g, d in zip(given, derived)], pa.string())
    else:
        out["answer_type"] = _as_strings(at, "answer_type", origin, qids)

    out["image_id"] = _as_strings(col[resolved["image_id"]], "image_id", origin, qids)
    return dataset_from_arrays(out)


def check_images(ds: datasets.Dataset, limit: int | None = None) -> int:
    """Open every distinct image of ``ds`` (the first ``limit`` ones) and report bad ones together.

    Returns how many distinct images were opened. Raises :class:`DataError` naming each
    unreadable or missing image (its path, question_id and image_id).
    """
    from PIL import Image as PILImage

    if "image" not in ds.column_names:
        raise DataError("check_images: the dataset has no 'image' column")
    raw = ds.cast_column("image", datasets.Image(decode=False)) if isinstance(ds.features["image"], datasets.Image) else ds
    has_ids = "question_id" in raw.column_names and "image_id" in raw.column_names
    names = ["image"] + (["question_id", "image_id"] if has_ids else [])
    seen: set[Any] = set()
    bad: list[str] = []
    opened = 0
    for i, row in enumerate(raw.select_columns(names)):
        if limit is not None and opened >= limit:
            break
        img = row["image"]
        path = img.get("path") if isinstance(img, Mapping) else None
        data = img.get("bytes") if isinstance(img, Mapping) else None
        key = row["image_id"] if has_ids else (path if data is None else i)
        if key in seen:
            continue
        seen.add(key)
        opened += 1
        name = path or "<embedded bytes>"
        where = f"question_id {row['question_id']} (image_id {row['image_id']})" if has_ids else f"row {i}"
        try:
            if data is not None:
                src: Any = io.BytesIO(data)
            elif path is not None:
                src = path
            else:
                raise ValueError("no image")
            with PILImage.open(src) as im:
                im.load()
        except Exception as e:  # PIL raises many types for bad files
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            bad.append(f"{name}: {where}: {reason}")
    if bad:
        lines = [f"{len(bad)} of {opened} image(s) cannot be read:"]
        lines += [f"  - {b}" for b in bad[:20]]
        if len(bad) > 20:
            lines.append(f"  ... and {len(bad) - 20} more")
        raise DataError("\n".join(lines))
    return opened


def image_ids(ds: datasets.Dataset) -> list[str]:
    """The ``image_id`` column as a Python list of strings, without decoding any image."""
    if len(ds) == 0:
        return []
    col = ds.select_columns(["image_id"]).with_format("arrow")[:].column("image_id")
    return [str(x) for x in col.to_pylist()]


def column_values(ds: datasets.Dataset, name: str) -> list[Any]:
    """One column as a Python list, without decoding images."""
    if len(ds) == 0:
        return []
    return ds.select_columns([name]).with_format("arrow")[:].column(name).to_pylist()


__all__ = [
    "FEATURES",
    "REQUIRED_FIELDS",
    "UNKNOWN_QUESTION_TYPE",
    "check_images",
    "column_values",
    "dataset_from_arrays",
    "derive_answer_type",
    "image_ids",
    "resolve_columns",
    "to_schema",
]
