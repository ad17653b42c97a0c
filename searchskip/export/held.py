"""Weights kept from plain loaders: an export whose plan needs searchskip at runtime.

An export's plan either runs in a plain model (blocks removed, FFN channels pruned, sublayer skips
for every token written into the weights: :mod:`searchskip.export.bake`), or needs hooks a plain
model does not have (token scopes, parallel ops, ``visual_tokens``, ``early_exit``). Plain
``from_pretrained`` of the second kind would silently build the *unplanned* model of the kept
layers, so its weights are saved under :data:`HELD_WEIGHTS` instead of ``model.safetensors``:
transformers then finds no weights and refuses to load the folder ("no file named
model.safetensors"), and the folder's ``README.md`` says why and how to load it
(``searchskip.load_compressed``). Serving engines read every ``*.safetensors`` file and pick the
model class by ``config.json``'s ``architectures``, so that names a class of their own
(:data:`ARCH_PREFIX` + the model's class, e.g. ``SearchSkipLlavaForConditionalGeneration``),
which a stock vLLM refuses ("not supported") and only a searchskip plugin may serve. The config,
tokenizer and processor stay where every tool finds them (transformers picks its class by
``model_type``). :func:`loadable` gives searchskip's own loader a view of the folder with the
standard names.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["ARCH_PREFIX", "HELD_WEIGHTS", "MODEL_CARD", "hold_weights", "is_held", "loadable", "name_plugin_classes"]

ARCH_PREFIX = "SearchSkip"
"""Prefix of the ``architectures`` entries of an export whose weights are held."""
HELD_WEIGHTS = "searchskip-model.safetensors"
"""The weights file of an export that needs searchskip (its index: ``+ .index.json``)."""
_PLAIN = "model.safetensors"

MODEL_CARD = """# A searchskip export that needs searchskip to run

This model's compression plan keeps operations a plain model cannot express (token scopes,
parallel sublayers or blocks, visual-token dropping or early exit: see `searchskip_export.json`,
`runtime_plan`). Loaded as a plain model it would answer differently, so its weights are saved as
`{held}` and plain `from_pretrained` refuses the folder (and `config.json` names a model class a stock
serving engine does not know). Load it with:

```python
import searchskip
model = searchskip.load_compressed("{folder}")
```
"""


def is_held(folder: str | Path) -> bool:
    """Whether ``folder``'s weights are kept from plain loaders."""
    folder = Path(folder)
    return (folder / HELD_WEIGHTS).is_file() or (folder / f"{HELD_WEIGHTS}.index.json").is_file()


def hold_weights(folder: str | Path) -> None:
    """Rename the weights ``save_pretrained`` wrote into ``folder`` (one file, or the shards'
    index) to :data:`HELD_WEIGHTS` and write the folder's ``README.md``."""
    folder = Path(folder)
    for plain, held in ((_PLAIN, HELD_WEIGHTS), (f"{_PLAIN}.index.json", f"{HELD_WEIGHTS}.index.json")):
        if (folder / plain).is_file():
            os.replace(folder / plain, folder / held)
    name_plugin_classes(folder)
    (folder / "README.md").write_text(MODEL_CARD.format(held=HELD_WEIGHTS, folder=folder.name))


def name_plugin_classes(folder: str | Path) -> None:
    """Make ``folder``'s ``config.json`` name the searchskip vLLM plugin's classes (:data:`ARCH_PREFIX`
    + each of its ``architectures``): stock vLLM refuses it, the plugin serves it with its plan."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    config["architectures"] = [name if name.startswith(ARCH_PREFIX) else ARCH_PREFIX + name
                               for name in config.get("architectures") or []]
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def loadable(folder: str | Path) -> Iterator[str]:
    """The path to give ``from_pretrained`` for ``folder``: the folder itself, or, for held
    weights, a temporary folder of links to its files with the weights under their standard
    names (removed on exit; the links' targets are untouched)."""
    folder = Path(folder)
    if not is_held(folder):
        yield str(folder)
        return
    rename = {HELD_WEIGHTS: _PLAIN, f"{HELD_WEIGHTS}.index.json": f"{_PLAIN}.index.json"}
    with tempfile.TemporaryDirectory(prefix="searchskip-load-") as view:
        for entry in folder.iterdir():
            if entry.name != "README.md":
                os.symlink(entry.resolve(), Path(view) / rename.get(entry.name, entry.name))
        yield view
