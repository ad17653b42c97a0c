"""Exports: a searched plan leaves the tool as a compressed model, a plan file, a fine-tune recipe
and a report (``searchskip export``).

* :mod:`searchskip.export.model` — remove layers, bake pruning, store the runtime plan;
* :mod:`searchskip.export.load` — :func:`load_compressed`;
* :mod:`searchskip.export.atomic` — atomic export folders with a sha256 manifest;
* :mod:`searchskip.export.manifest` — ``manifest.json``: write, read, verify;
* :mod:`searchskip.export.owner` — which existing folder a write may replace (only searchskip's own);
* :mod:`searchskip.export.report` — ``report.md`` and ``pareto.png``;
* :mod:`searchskip.export.recipe` — ``finetune.yaml``;
* :mod:`searchskip.export.writer` — one export folder from a plan (what the verb runs).
"""
