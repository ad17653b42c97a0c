"""One-shot importance baselines the search is compared with (and seeds its study with), one module
each, registered in :data:`BASELINES`.

* :func:`block_influence` -- ShortGPT's Block Influence (BI) of every decoder layer, measured
  once on calibration batches; :func:`block_influence_plan` turns it into a plan by skipping
  the least influential layers until a FLOP budget is met (ShortGPT's layer removal, with
  ``skip_block`` standing in for deleting the layer).
* :func:`layer_contribution` -- ShortV's Layer Contribution of every decoder layer (how far the
  answer-token distribution moves when only that layer's image tokens are frozen), measured once
  on calibration batches; :func:`layer_contribution_plan` freezes the image tokens (scope
  ``visual``) of the least contributing layers until a FLOP budget is met.
* :func:`greedy_sublayer_removal` -- a FinerCut-style greedy search: remove the least harmful
  attention or FFN sublayer, one at a time, until the smallest budget fits.
* :func:`paper_interval_plans` -- the seed paper's interval plans
  (:meth:`~searchskip.plan.Plan.from_pattern` over modes x intervals x start layers), one
  shared definition for the study and the benchmarks; :func:`best_fitting` keeps those that
  fit a budget.

::

    from searchskip.search.baselines import block_influence, block_influence_plan
    bi = block_influence(loaded.model, calibration_batches(loaded, rows, 16, 0))
    plan = block_influence_plan(bi, loaded.model.config, workload, Budget(ratio=0.75))
"""

from __future__ import annotations

from searchskip.search.baselines.block_influence import (
    BI_OPS, block_influence, block_influence_plan, labelled_block_influence_plans,
)
from searchskip.search.baselines.greedy import GreedyStep, greedy_sublayer_removal
from searchskip.search.baselines.layer_contribution import (
    LC_OPS, labelled_layer_contribution_plans, layer_contribution, layer_contribution_plan,
)
from searchskip.search.baselines.paper import (
    PAPER_INTERVALS, PAPER_MODES, best_fitting, default_start_layers, labelled_paper_plans, paper_interval_plans,
)

__all__ = [
    "BASELINES",
    "BI_OPS",
    "PAPER_MODES",
    "PAPER_INTERVALS",
    "block_influence",
    "block_influence_plan",
    "labelled_block_influence_plans",
    "LC_OPS",
    "layer_contribution",
    "layer_contribution_plan",
    "labelled_layer_contribution_plans",
    "paper_interval_plans",
    "labelled_paper_plans",
    "default_start_layers",
    "best_fitting",
    "GreedyStep",
    "greedy_sublayer_removal",
]

BASELINES: dict[str, str] = {
    "block_influence": "searchskip.search.baselines.block_influence",
    "layer_contribution": "searchskip.search.baselines.layer_contribution",
    "paper": "searchskip.search.baselines.paper",
    "greedy": "searchskip.search.baselines.greedy",
}
"""The baselines, by the name the study's seeds and the benchmark's rows use -> their module."""
