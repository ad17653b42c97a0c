"""Load the model a job names, safely: the embedded default, a local folder, or a hub id.

Safe by default: safetensors only (pickled ``.bin``/``.pt`` weights need
``model.allow_pickle: true``, and transformers then loads them with
``torch.load(weights_only=True)``), and ``trust_remote_code`` only with a
revision pinned to a commit hash.

A model is loaded as it runs: the folder of an export (or of a fine-tune of one) holds a
``searchskip_export.json`` with the prompt template its plan was scored with and, when the
plan keeps runtime ops, that runtime plan; :func:`load_model` uses the template (unless the
job sets ``model.prompt_template``) and applies the plan. So every verb that scores a model
(``eval``, the export check, the fine-tune's reports) scores it the same way.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searchskip.config.job import EMBEDDED_PREFIX, ModelSpec
from searchskip.errors import ModelError, OfflineError, SearchSkipError, first_line

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
DTYPES = ("float32", "float16", "bfloat16")
"""The ``model.dtype`` values (``ModelSpec.dtype``), each a ``torch`` dtype's name."""


@dataclass
class LoadedModel:
    """A model ready to score: the module, its processor, prompt template and device."""

    model: Any
    processor: Any
    template: str
    device: str
    source: str
    """Where the weights came from (a folder or a hub id)."""


def resolve_source(spec: ModelSpec) -> tuple[str, str | None]:
    """``(path or hub id, the prompt template stored with the model or None)`` for ``spec.id``:
    an embedded model's template, or the one an export's ``searchskip_export.json`` records."""
    from searchskip import zoo

    if spec.id.startswith(EMBEDDED_PREFIX):
        name = spec.id[len(EMBEDDED_PREFIX):]
        try:
            entry = zoo.embedded_model(name)
        except KeyError:
            raise ModelError(
                f"model.id: unknown embedded model '{name}' (known: {', '.join(zoo.embedded_names())})"
            ) from None
        if not (entry.path / "config.json").is_file():
            raise ModelError(f"model.id: the embedded model's files are missing from {entry.path}; reinstall searchskip")
        return str(entry.path), entry.prompt_template
    from searchskip.export.model import read_export_info

    info = read_export_info(spec.id) if Path(spec.id).is_dir() else None
    return spec.id, (info or {}).get("prompt_template") or None


def check_safety(spec: ModelSpec, source: str) -> None:
    """Refuse remote code without a pinned commit, and pickled weights unless allowed."""
    if spec.trust_remote_code and not (spec.revision and _COMMIT.match(spec.revision)):
        raise ModelError(
            "model.trust_remote_code: true needs model.revision pinned to a 40-character commit hash, "
            f"but got revision={spec.revision!r}"
        )
    folder = Path(source)
    if folder.is_dir() and not spec.allow_pickle:
        has_safe = any(folder.glob("*.safetensors"))
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickles and not has_safe:
            raise ModelError(
                f"model.id: {folder} holds only pickled weights ({', '.join(pickles)}); pickles can run code when "
                "loaded, so searchskip refuses them unless model.allow_pickle: true (then torch.load(weights_only=True))"
            )


def check_family(spec: ModelSpec) -> None:
    """:class:`ModelError` when the model of ``spec`` is of a family searchskip does not support, a
    text-only model, has ``config.json`` values its family does not allow
    (:mod:`searchskip.arch.config_rules`) or damaged or missing files (:mod:`searchskip.model_files`),
    judged without loading weights or processor: every verb runs this before loading anything,
    ``searchskip validate`` included, so all refuse it with one message. Only local (and embedded)
    folders are checked; a hub id is checked once its config is loaded."""
    from searchskip.model_files import check_model_files

    source, _ = resolve_source(spec)
    if Path(source).is_dir():
        _, _, geometry = model_geometry(spec)  # its family first: what no file can mend
        if geometry.vision is None:
            raise ModelError(f"'{spec.id}' is a text-only model ({geometry.family}); a job scores visual question "
                             "answering, which needs a vision-language model (this decoder is supported inside "
                             "one: LLaVA over it, or its family's own VLM); `searchskip flops JOB --prompt-tokens N "
                             "--generated-tokens N` prices it as it is")
        try:
            check_model_files(source, processor=True, weights=True)
        except ModelError as err:
            raise ModelError(f"'{spec.id}': {err}") from None


def model_geometry(spec: ModelSpec) -> tuple[Any, str, Any]:
    """``(config, where it came from, ArchGeometry)`` of ``spec``'s model (see
    :func:`searchskip.flops.resolve_config`); an unsupported family's :class:`ModelError` names
    the model as the job wrote it."""
    from searchskip.flops import geometry_of, resolve_config
    from searchskip.model_files import check_model_files

    try:
        check_model_files(resolve_source(spec)[0])
        config, where = resolve_config(spec)
        return config, where, geometry_of(config)
    except ModelError as err:  # name the folder the user wrote
        raise ModelError(f"'{spec.id}': {err}") from None


def _device(requested: str) -> str:
    import torch

    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"model.device: '{requested}' was asked for, but torch sees no CUDA device here")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ModelError("model.device: 'mps' was asked for, but it is not available here")
    return requested


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load model and processor for ``spec``, in eval mode on ``spec.device``; an export's model
    folder gets its stored prompt template and runtime plan (see the module doc).

    Raises :class:`ModelError` for unsafe or unsupported models, for a processor that disagrees
    with the model's config or prompt template (:func:`searchskip.processor_check.check_processor`)
    and for weights that do not fit the config, and :class:`OfflineError` when a hub model is
    neither cached nor reachable.
    """
    import torch
    from transformers import AutoModelForImageTextToText
    from transformers.utils import logging as hf_logging

    from searchskip.export.held import loadable
    from searchskip.export.model import apply_runtime_plan

    device = _device(spec.device)
    source, _ = resolve_source(spec)
    check_safety(spec, source)
    check_family(spec)
    hf_logging.disable_progress_bar()  # searchskip shows its own progress
    processor, template = checked_processor(spec)
    kwargs = dict(revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a load report's table is not for the user: the error below says it
    try:
        with loadable(source) as path:  # an export whose weights plain loaders must not read
            model = AutoModelForImageTextToText.from_pretrained(
                path, dtype=getattr(torch, spec.dtype), use_safetensors=not spec.allow_pickle, **kwargs
            )
    except pickle.UnpicklingError as err:  # allow_pickle: torch.load(weights_only=True) met a non-tensor object
        raise ModelError(f"model.id: '{source}' holds a pickled checkpoint with objects other than tensors; it was "
                         f"refused without running them (torch.load(weights_only=True)): {first_line(err)}") from None
    except ValueError as err:  # unknown architecture for the auto class
        raise ModelError(f"model.id: cannot load '{source}' as an image-text-to-text model: {err}") from None
    except RuntimeError as err:  # weights whose shapes the config does not give
        raise ModelError(f"model.id: '{source}': its weights do not fit its config.json (a setting that sizes a "
                         f"layer differs from the one the weights were saved with): {first_line(err)}") from None
    except OSError as err:
        raise _not_loadable(source, err) from None
    except Exception as err:  # noqa: BLE001 - safetensors' own error type for a damaged file
        if type(err).__name__ != "SafetensorError":
            raise
        raise ModelError(f"model.id: '{source}': a weights file cannot be read ({first_line(err)}); it may be cut "
                         "short: copy it again") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    model.to(device).eval()
    loaded = LoadedModel(model=model, processor=processor, template=template, device=device, source=source)
    apply_runtime_plan(loaded)
    return loaded


def checked_processor(spec: ModelSpec) -> tuple[Any, str]:
    """``(processor, prompt template)`` of ``spec``'s model, checked against its config
    (:func:`searchskip.processor_check.check_processor`): what :func:`load_model` loads before the
    weights, and what ``searchskip validate`` checks of a local folder. The folder's files are the
    caller's to check first (:func:`check_family`, or ``check_model_files(processor=True)``)."""
    from searchskip.eval.prompts import resolve_template
    from searchskip.processor_check import check_processor
    from searchskip.processors import load_processor

    source, stored_template = resolve_source(spec)
    try:
        processor = load_processor(source, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    except OSError as err:
        raise _not_loadable(source, err) from None
    except Exception as err:  # noqa: BLE001 - a damaged setting breaks a processor's build in many ways
        if not Path(source).is_dir():
            raise
        raise ModelError(f"model.id: '{source}': its processor cannot be built from its files "
                         f"({type(err).__name__}: {first_line(err)}); check preprocessor_config.json, "
                         "processor_config.json and tokenizer_config.json") from None
    check_image_settings(processor, source)
    config, _, geometry = model_geometry(spec)
    template = resolve_template(config.model_type, spec.prompt_template, stored_template)
    check_processor(config, geometry, processor, template, source=spec.id,
                    template_key="model.prompt_template" if spec.prompt_template else None)
    return processor, template


def _not_loadable(source: str, err: OSError) -> SearchSkipError:
    if Path(source).exists():
        return ModelError(f"model.id: '{source}' is not a loadable model folder: {first_line(err)}")
    return OfflineError(
        f"model.id: '{source}' is not in the local Hugging Face cache and the hub could not be reached. "
        "Download it on a machine with network access (huggingface-cli download) or point model.id at a local folder."
    )


def check_image_settings(processor: Any, source: str) -> None:
    """:class:`ModelError` for image-processor settings searchskip cannot count or batch: Gemma 3's
    pan-and-scan (``do_pan_and_scan``) adds a variable number of crops, each with its own image
    tokens, to some images; searchskip prices and batches one 896-pixel image per sample."""
    image_processor = getattr(processor, "image_processor", None)
    if getattr(image_processor, "do_pan_and_scan", False):
        raise ModelError(f"model.id: '{source}' has its image processor's do_pan_and_scan on; searchskip supports Gemma 3 "
                         "with one crop per image only: set \"do_pan_and_scan\": false in its preprocessor_config.json "
                         "(or the processor config)")
