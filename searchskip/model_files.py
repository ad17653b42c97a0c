"""What a local model folder must hold before any verb reads it, checked from the files alone.

transformers reports a damaged folder in many ways: a half-written ``tokenizer_config.json`` is a
``JSONDecodeError``, a ``processor_config.json`` holding a list an ``AttributeError``, a cut
``model.safetensors`` a ``SafetensorError``, a missing ``tokenizer.json`` a hint to install
sentencepiece, a missing image processor a hint about the hub. :func:`check_model_files` reads
the folder first and names the file and what is wrong with it:

* ``config.json`` exists; every JSON file transformers reads (:data:`JSON_FILES`) that is
  present parses to a JSON object;
* every ``*.safetensors`` file has a whole header and holds every byte its header points to, and
  every shard a ``*.safetensors.index.json`` names exists;
* with ``weights=True`` (every verb that loads the model): weights to load (``*.safetensors``, or
  pickled ones, which :func:`searchskip.models.check_safety` rules on);
* with ``processor=True`` (every verb that reads the model's processor): the tokenizer's own
  files (:data:`TOKENIZER_FILES`) and, for a vision-language model, its image processor's
  settings (``preprocessor_config.json``, or an ``image_processor`` entry of
  ``processor_config.json``).

Hub ids (not a folder here) are not checked: transformers reads them from its cache.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from searchskip.errors import ModelError

__all__ = ["JSON_FILES", "TOKENIZER_FILES", "WEIGHT_FILES", "check_model_files"]

JSON_FILES = ("config.json", "generation_config.json", "processor_config.json", "preprocessor_config.json",
              "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "chat_template.json",
              "added_tokens.json", "video_preprocessor_config.json")
"""Files transformers reads as one JSON object."""

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
"""A tokenizer needs one of these (``*.tiktoken`` too); ``tokenizer_config.json`` alone is not one."""


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt")
"""What a folder's weights may be saved as."""


def check_model_files(source: str | Path, *, processor: bool = False, weights: bool = False) -> None:
    """:class:`~searchskip.errors.ModelError` naming the file and the rule (not the folder: callers
    add it as the job wrote it) when the local folder ``source`` cannot be read as a model (see the
    module doc); nothing for a hub id."""
    folder = Path(source)
    if not folder.is_dir():
        return
    if not (folder / "config.json").is_file():
        raise ModelError("not a loadable model folder: it has no config.json (save_pretrained writes one)")
    objects = {name: _json_object(folder, name) for name in JSON_FILES if (folder / name).is_file()}
    for path in sorted(folder.glob("*.safetensors")):
        _check_safetensors(folder, path)
    for index in sorted(folder.glob("*.safetensors.index.json")):
        _check_index(folder, index)
    if weights and not any(any(folder.glob(pattern)) for pattern in WEIGHT_FILES):
        _refuse(folder, "model.safetensors", "is missing: the folder holds no weights (model.save_pretrained writes "
                                             "them)")
    if processor:
        _check_processor_files(folder, objects)


def _refuse(folder: Path, name: str, rule: str) -> None:
    raise ModelError(f"{name} {rule}")  # the caller names the folder as the job wrote it


_WHOLE_READ = 1 << 20
"""JSON files up to this size are parsed; a bigger one (a 30 MB ``tokenizer.json``) is checked for
being cut short (it must end where its object does) and left to transformers to parse."""


def _json_object(folder: Path, name: str) -> dict:
    path = folder / name
    try:
        if path.stat().st_size > _WHOLE_READ:
            with open(path, "rb") as f:
                first = f.read(64).lstrip()[:1]
                f.seek(-64, 2)
                last = f.read().rstrip()[-1:]
            if first != b"{" or last != b"}":
                _refuse(folder, name, "is not a whole JSON object (it does not end where it began); it may be "
                                      "cut short: copy it again")
            return {}
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        _refuse(folder, name, f"is not valid JSON ({err}); it may be cut short: copy it again")
    except OSError as err:
        _refuse(folder, name, f"cannot be read ({err.strerror or err})")
    if not isinstance(data, dict):
        _refuse(folder, name, f"must hold a JSON object, but holds a {type(data).__name__}")
    return data


def _check_safetensors(folder: Path, path: Path) -> None:
    """The header is whole JSON and every tensor's bytes lie within the file."""
    size = path.stat().st_size
    rule = "is not a whole safetensors file ({}); it may be cut short: copy it again"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            _refuse(folder, path.name, rule.format(f"{size} bytes"))
        (length,) = struct.unpack("<Q", head)
        if length > size - 8 or length > 100_000_000:
            _refuse(folder, path.name, rule.format(f"its header claims {length} bytes of a {size}-byte file"))
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError):
            _refuse(folder, path.name, rule.format("its header is not JSON"))
    if not isinstance(header, dict):
        _refuse(folder, path.name, rule.format("its header is not a JSON object"))
    data = size - 8 - length
    end = max((int(t["data_offsets"][1]) for k, t in header.items()
               if k != "__metadata__" and isinstance(t, dict) and len(t.get("data_offsets") or ()) == 2), default=0)
    if end > data:
        _refuse(folder, path.name, rule.format(f"its tensors need {end} bytes, it holds {data}"))


def _check_index(folder: Path, index: Path) -> None:
    data = _json_object(folder, index.name)
    shards = sorted({str(v) for v in (data.get("weight_map") or {}).values()})
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        _refuse(folder, index.name, f"names shards that are missing: {', '.join(missing[:3])}"
                                    f"{' ...' if len(missing) > 3 else ''}")


def _check_processor_files(folder: Path, objects: dict[str, dict]) -> None:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES) and not any(folder.glob("*.tiktoken")):
        _refuse(folder, "tokenizer files", f"are missing: a tokenizer needs one of {', '.join(TOKENIZER_FILES)} "
                                           "(processor.save_pretrained writes them)")
    config = objects.get("config.json", {})
    if "vision_config" in config and "preprocessor_config.json" not in objects \
            and not isinstance(objects.get("processor_config.json", {}).get("image_processor"), dict):
        _refuse(folder, "preprocessor_config.json", "is missing: a vision-language model's folder holds its image "
                "processor's settings (there, or as `image_processor` in processor_config.json; "
                "processor.save_pretrained writes them)")
