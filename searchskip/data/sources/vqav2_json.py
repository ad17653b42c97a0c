"""``vqav2_json``: the official VQAv2 files (questions JSON, annotations JSON, image folder).

The locator of a split is ``{questions: FILE, annotations: FILE, images: DIR}``:

* questions: ``{"questions": [{"image_id", "question", "question_id"}, ...]}``
  (e.g. ``v2_OpenEnded_mscoco_val2014_questions.json``);
* annotations: ``{"annotations": [{"question_id", "image_id", "answers": [{"answer",
  "answer_confidence", "answer_id"}], "multiple_choice_answer", "question_type",
  "answer_type"}, ...]}`` (e.g. ``v2_mscoco_val2014_annotations.json``). They are
  required for every split: the answers are needed to score;
* images: a folder of pictures named like COCO (``COCO_val2014_000000000042.jpg``,
  i.e. ``*_{image_id:012d}.jpg``) or ``{image_id}.jpg``/``.png``. The folder is
  scanned once.

A question without an annotation or without an image is an error naming the file and
the question_id.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

from searchskip.config.job import DataSpec
from searchskip.data.schema import UNKNOWN_QUESTION_TYPE, dataset_from_arrays, derive_answer_type
from searchskip.data.sources.base import RawSplit
from searchskip.errors import ConfigError, DataError, Problem

KEYS = ("questions", "annotations", "images")
_IMAGE_NAME = re.compile(r"^(?:.*_)?0*(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)
_MAX_LISTED = 10


def _listing(items: list[Any]) -> str:
    more = len(items) - _MAX_LISTED
    return ", ".join(map(str, items[:_MAX_LISTED])) + (f" ... and {more} more" if more > 0 else "")


def index_images(folder: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Scan ``folder`` once: image id (as a string, no leading zeros) -> file, and ids with several files."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such image folder")
    index: dict[str, str] = {}
    dups: dict[str, list[str]] = {}
    with os.scandir(folder) as it:
        names = sorted(e.name for e in it if e.is_file())
    for name in names:
        m = _IMAGE_NAME.match(name)
        if not m:
            continue
        key = str(int(m.group(1)))
        path = os.path.join(folder, name)
        if key in index:
            dups.setdefault(key, [index[key]]).append(path)
        else:
            index[key] = path
    return index, dups


def _read_json(path: str, key: str, role: str) -> list[dict[str, Any]]:
    if not isinstance(path, str) or not os.path.isfile(path):
        raise DataError(f"data.splits.{role}.{key}: {path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot be read as JSON: {e}") from None
    items = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON object with a list '{key}' (the official VQAv2 layout)")
    return items


def _norm_id(value: Any) -> str:
    """VQAv2 ids are ints; accept their string form and drop leading zeros of digit strings."""
    s = str(value).strip()
    return str(int(s)) if s.isdigit() else s


def load(spec: DataSpec, locator: Any, role: str) -> RawSplit:
    if not isinstance(locator, Mapping) or set(locator) != set(KEYS):
        raise ConfigError(
            [
                Problem(
                    None,
                    f"data.splits.{role}",
                    f"must be {{questions: FILE, annotations: FILE, images: DIR}} for vqav2_json, got {locator!r}",
                )
            ]
        )
    qfile, afile, folder = (str(locator[k]) for k in KEYS)
    questions = _read_json(qfile, "questions", role)
    annotations = _read_json(afile, "annotations", role)

    by_qid: dict[str, Mapping[str, Any]] = {}
    for n, a in enumerate(annotations):
        if not isinstance(a, Mapping) or "question_id" not in a or not isinstance(a.get("answers"), list):
            raise DataError(f"{afile}: annotation #{n} needs 'question_id' and a list 'answers'")
        by_qid[_norm_id(a["question_id"])] = a

    images, dups = index_images(folder)
    out: dict[str, list[Any]] = {k: [] for k in ("question_id", "image", "question", "answers", "question_type", "answer_type", "image_id")}
    no_annotation: list[str] = []
    no_image: list[str] = []
    ambiguous: list[str] = []
    mismatched: list[str] = []
    no_answers: list[str] = []
    for n, q in enumerate(questions):
        if not isinstance(q, Mapping) or not all(k in q for k in ("question_id", "image_id", "question")):
            raise DataError(f"{qfile}: question #{n} needs 'question_id', 'image_id' and 'question'")
        qid = _norm_id(q["question_id"])
        iid = _norm_id(q["image_id"])
        ann = by_qid.get(qid)
        if ann is None:
            no_annotation.append(qid)
            continue
        if "image_id" in ann and _norm_id(ann["image_id"]) != iid:
            mismatched.append(f"{qid} (image {iid} vs {_norm_id(ann['image_id'])})")
            continue
        if iid in dups:
            ambiguous.append(f"{qid} (image {iid}: {', '.join(dups[iid])})")
            continue
        path = images.get(iid)
        if path is None:
            no_image.append(f"{qid} (image {iid})")
            continue
        answers = [
            str(x.get("answer")) if isinstance(x, Mapping) else str(x)
            for x in ann["answers"]
            if x is not None and not (isinstance(x, Mapping) and x.get("answer") is None)
        ]
        if not answers:
            no_answers.append(qid)
            continue
        out["question_id"].append(qid)
        out["image"].append(path)
        out["question"].append(str(q["question"]))
        out["answers"].append(answers)
        out["question_type"].append(str(ann.get("question_type") or UNKNOWN_QUESTION_TYPE))
        out["answer_type"].append(str(ann.get("answer_type") or derive_answer_type(answers)))
        out["image_id"].append(iid)

    problems = []
    if no_annotation:
        problems.append(f"{afile}: no annotation for {len(no_annotation)} question(s) of {qfile}: question_id {_listing(no_annotation)}")
    if mismatched:
        problems.append(f"{afile}: image_id differs from {qfile} for question_id {_listing(mismatched)}")
    if no_answers:
        problems.append(f"{afile}: no answers for question_id {_listing(no_answers)}")
    if no_image:
        problems.append(
            f"{folder}: no image file (*_{{image_id:012d}}.jpg or {{image_id}}.jpg/.png) for "
            f"{len(no_image)} question(s) of {qfile}: question_id {_listing(no_image)}"
        )
    if ambiguous:
        problems.append(f"{folder}: several files for the image of question_id {_listing(ambiguous)}")
    if problems:
        raise DataError("\n".join(problems))
    if not out["question_id"]:
        raise DataError(f"{qfile}: no questions")
    return RawSplit(dataset_from_arrays(out), qfile)
