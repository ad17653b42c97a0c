"""Search spaces: loading and checking, suggestions with optuna's samplers, the inverse
(params_for), the grid and the size, and ``searchskip validate`` on space files."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from searchskip import cli
from searchskip.commands import validate
from searchskip.errors import ConfigError
from searchskip.plan import DropSpec, EarlyExitSpec, LayerOp, Plan, PruneSpec, VisualTokensSpec
from searchskip.search import PaperSpace, PerLayerSpace, Space, layer_param

optuna.logging.set_verbosity(optuna.logging.WARNING)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO_ROOT / "spaces").glob("*.yaml"))  # not the plans/ subfolder

TINY_PER_LAYER = """\
version: 1
layers: {from: 1, to: -2}
ops: [keep, skip_attn, parallel_blocks]
scope: [all, generated]
prune:
  method: [none, magnitude]
  structure: [unstructured, "2:4"]
  sparsity: [0.25, 0.5]
"""
# Its size by hand, with 5 layers (1..3 searchable): layers 2-3 alone have 2 * 2 + 1 (pair 2+3) = 5 op
# sequences; with layer 1: 2 * 5 + 2 (pair 1+2, then layer 3 alone) = 12, one of them all keep, so
# 11 * 2 scopes + 1 = 23 layer plans; prune: none, 0.25, 0.5, 2:4 -> 4 distinct; 23 * 4 = 92.

TINY_TOKENS = """\
version: 1
layers: {from: 1, to: -2}
ops: [keep, skip_attn, parallel_blocks]
visual_tokens:
  keep: [1.0, 0.5]
  after_layer: [2, -2]
  rank: [attention, uniform]
early_exit:
  layer: [none, 1, 2]
"""
# Its size by hand, with 5 layers: the same 12 op sequences of layers 1..3 (K keep, A skip_attn, P pair).
# visual_tokens: no dropping, or keep 0.5 from after_layer 2 or 3 (-2), ranked 2 ways unless the layer
# before skips attention (then uniform only); a pair at after_layer - 1 moves after_layer one later.
# early_exit: none, or after 1 or 2; a pair at the exit layer moves it one later.
# * P@1 (layers 1+2), layer 3 K or A: after 2 -> 3 and 3 -> 3, ranked by layer 2 (partner): 1 + 2 = 3;
#   exit 1 -> 2 and 2 -> 2: 1 + 1 = 2; 2 sequences * 3 * 2 = 12.
# * layer 1 K or A, P@2 (layers 2+3): after 2 (ranked by layer 1: 2 ways for K, 1 for A) and 3 -> 4 (by
#   layer 3, partner: 2 ways): 5 or 4; exit 1 and 2 -> 3: 1 + 2 = 3; (5 + 4) * 3 = 27.
# * no pair, layers 1..3 K or A: after 2 by layer 1, 3 by layer 2: 1 + r1 + r2 (r = 2 for K, 1 for A),
#   summed over layers 1-2: 4 + 6 + 6 = 16; times 2 (layer 3) times 3 exits = 96.
# 12 + 27 + 96 = 135.

TINY_PAPER = """\
version: 1
kind: paper
mode: [skip_block, parallel_blocks]
skip_interval: [2, 3]
start_layer: {low: 0, high: 2}
end_layer: [-1, 6]
scope: [all, generated]
"""


def space_from(write_yaml, text: str, name: str = "spaces/s.yaml") -> Space:
    return Space.load(write_yaml(text, name=name))


def problems_of(write_yaml, text: str) -> tuple[Path, list]:
    path = write_yaml(text, name="spaces/bad.yaml")
    with pytest.raises(ConfigError) as info:
        Space.load(path)
    return path, info.value.problems


def objective_value(plan: Plan) -> float:
    return int(plan.key()[:8], 16) / 16**8  # deterministic, spread out: something for TPE to model


# --------------------------------------------------------------------------------------
# Shipped spaces
# --------------------------------------------------------------------------------------


def test_shipped_spaces_exist_load_and_validate(capsys):
    assert SHIPPED, "no spaces/*.yaml shipped"
    assert {p.name for p in SHIPPED} >= {"paper.yaml", "per-layer.yaml", "sublayer.yaml", "prune.yaml", "tokens.yaml",
                                         "visual.yaml", "joint.yaml"}
    for path in SHIPPED:
        assert path.read_text(encoding="utf-8").startswith("#"), f"{path.name} has no header comment"
        space = Space.load(path)
        for n in (8, 32):
            space.check(n)
            assert space.size(n) >= 1
    assert cli.main(["validate", *map(str, SHIPPED)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"OK {p}" for p in SHIPPED] and err == ""


def test_shipped_spaces_have_the_documented_design():
    paper = Space.load(REPO_ROOT / "spaces" / "paper.yaml")
    assert isinstance(paper, PaperSpace)
    assert set(paper.modes) == {"skip_block", "skip_attn", "skip_ffn", "parallel_attn_ffn", "parallel_blocks"}
    assert paper.grid(32)["paper.skip_interval"] == [2, 3, 4] and paper.scopes == ("all", "generated")
    per_layer = Space.load(REPO_ROOT / "spaces" / "per-layer.yaml")
    assert isinstance(per_layer, PerLayerSpace) and per_layer.scopes == ("all",)
    assert per_layer.searchable_layers(8) == tuple(range(8))  # every layer: the search learns which are vital
    assert Space.load(REPO_ROOT / "spaces" / "sublayer.yaml").ops == ("keep", "skip_attn", "skip_ffn")
    prune = Space.load(REPO_ROOT / "spaces" / "prune.yaml")
    assert prune.grid(8) == {"prune.method": ["magnitude", "wanda"],
                             "prune.structure": ["unstructured", "2:4", "ffn_channels"],
                             "prune.sparsity": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]}
    assert prune.size(8) == 2 * (7 + 1 + 7)  # per method: 7 unstructured, 2:4 at 0.5, 7 ffn_channels
    tokens = Space.load(REPO_ROOT / "spaces" / "tokens.yaml")
    assert isinstance(tokens, PerLayerSpace) and "parallel_blocks" in tokens.ops
    grid = tokens.grid(8)
    assert {k: v for k, v in grid.items() if not k.startswith("layer_")} == {
        "scope": ["all", "generated"], "visual_tokens.keep": [1.0, 0.5, 0.25, 0.0],
        "visual_tokens.after_layer": [1, 2, 3, 4, 5, 6], "visual_tokens.rank": ["attention", "uniform"],
        "early_exit.layer": ["none", 5, 6]}


def sampled_plans(space: Space, num_layers: int, sampler: str, *, seed: int, startup: int,
                  n_trials: int) -> list[tuple[Plan, dict]]:
    """``(plan, params)`` of each trial of an optuna study over ``space`` with the ``random`` or
    ``tpe`` sampler (``startup`` random trials first), scored by :func:`objective_value`."""
    make = {"random": lambda: optuna.samplers.RandomSampler(seed=seed),
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)}[sampler]
    plans: list[tuple[Plan, dict]] = []

    def objective(trial: optuna.Trial) -> float:
        plan = space.suggest(trial, num_layers)
        plans.append((plan, dict(trial.params)))
        return objective_value(plan)

    optuna.create_study(sampler=make()).optimize(objective, n_trials=n_trials)
    return plans


@pytest.mark.parametrize("num_layers", [8, 32])
@pytest.mark.parametrize("sampler", ["random", "tpe"])
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_suggestions_are_valid_plans_and_round_trip(path, sampler, num_layers):
    space = Space.load(path)
    grid = space.grid(num_layers)
    plans = sampled_plans(space, num_layers, sampler, seed=1, startup=10, n_trials=50)
    assert len(plans) == 50
    assert len({p.key() for p, _ in plans}) > 1
    for plan, params in plans:
        assert plan.validate(num_layers) is plan
        for name, value in params.items():  # every parameter and value is in the grid form
            assert any(math.isclose(value, v) if isinstance(v, float) else value == v for v in grid[name]), name
        if isinstance(space, PaperSpace):  # the paper's plans are exactly Plan.from_pattern's
            expected = Plan.from_pattern(
                params["paper.skip_interval"], params["paper.start_layer"],
                params.get("paper.end_layer", num_layers), params["paper.mode"],
                params.get("scope", space.scopes[0]), num_layers,
                average=space.average and params["paper.mode"] == "parallel_blocks")
            assert plan == expected
        enqueued = space.params_for(plan, num_layers)
        assert enqueued is not None, plan.describe()
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=99))
        study.enqueue_trial(enqueued)
        assert space.suggest(study.ask(), num_layers).key() == plan.key()


# --------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------


def test_parameter_names_are_stable(write_yaml):
    space = space_from(write_yaml, TINY_PER_LAYER)
    assert layer_param(3) == "layer_03.op" and layer_param(12) == "layer_12.op"
    assert list(space.grid(5)) == ["layer_01.op", "layer_02.op", "layer_03.op", "scope",
                                   "prune.method", "prune.structure", "prune.sparsity"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"layer_01.op": "skip_attn", "layer_02.op": "keep", "layer_03.op": "skip_attn",
                         "scope": "generated", "prune.method": "magnitude", "prune.structure": "unstructured",
                         "prune.sparsity": 0.25})
    trial = study.ask()
    plan = space.suggest(trial, 5)
    assert sorted(trial.params) == sorted(space.grid(5))
    assert plan == Plan(layers={1: LayerOp("skip_attn"), 3: LayerOp("skip_attn")}, scope="generated",
                        prune=PruneSpec(method="magnitude", sparsity=0.25))
    paper = space_from(write_yaml, TINY_PAPER)
    assert list(paper.grid(8)) == ["paper.mode", "paper.skip_interval", "paper.start_layer", "paper.end_layer",
                                   "scope"]
    assert paper.grid(8)["paper.end_layer"] == [7, 6]  # -1 counts from the end
    assert paper.grid(8)["paper.start_layer"] == [0, 1, 2]


def test_parallel_blocks_partner_is_not_suggested(write_yaml):
    space = space_from(write_yaml, TINY_PER_LAYER)
    grid = space.grid(5)
    assert "parallel_blocks" in grid["layer_02.op"]
    assert "parallel_blocks" not in grid["layer_03.op"]  # its partner, layer 4, is not searchable
    study = optuna.create_study()
    study.enqueue_trial({"layer_01.op": "parallel_blocks", "layer_03.op": "skip_attn", "scope": "all",
                         "prune.method": "none"})
    trial = study.ask()
    plan = space.suggest(trial, 5)
    assert "layer_02.op" not in trial.params  # conditional: the partner of layer 1 keeps
    assert "prune.structure" not in trial.params and "prune.sparsity" not in trial.params
    assert plan == Plan(layers={1: "parallel_blocks", 3: "skip_attn"})


def test_two_four_is_suggested_without_a_sparsity(write_yaml):
    space = Space.load(REPO_ROOT / "spaces" / "prune.yaml")
    study = optuna.create_study()
    study.enqueue_trial({"prune.method": "magnitude", "prune.structure": "2:4"})
    study.enqueue_trial({"prune.method": "wanda", "prune.structure": "ffn_channels", "prune.sparsity": 0.3})
    first, second = study.ask(), study.ask()
    two_four = space.suggest(first, 8)
    assert "prune.sparsity" not in first.params
    assert two_four.prune.structure == "2:4" and two_four.prune.sparsity == 0.5
    channels = space.suggest(second, 8)
    assert channels.prune.targets == ("ffn",) and channels.prune.sparsity == 0.3
    assert channels.prune.calibration is not None and channels.prune.calibration.samples == 128
    assert space.params_for(two_four, 8) == {"prune.method": "magnitude", "prune.structure": "2:4"}


def test_params_for_plans_outside_the_space_is_none(write_yaml):
    space = space_from(write_yaml, TINY_PER_LAYER)
    inside = Plan(layers={2: "skip_attn"}, scope="generated", prune=PruneSpec(method="magnitude", sparsity=0.5))
    assert space.params_for(inside, 5) == {"layer_01.op": "keep", "layer_02.op": "skip_attn",
                                           "layer_03.op": "keep", "scope": "generated",
                                           "prune.method": "magnitude", "prune.structure": "unstructured",
                                           "prune.sparsity": 0.5}
    assert space.params_for(Plan(), 5) is not None  # the dense plan (all keep, no prune) is in it
    outside = [
        Plan(layers={0: "skip_attn"}),  # the first layer is not searchable
        Plan(layers={4: "skip_attn"}),  # nor the last
        Plan(layers={2: "skip_ffn"}),  # not an op of the space
        Plan(layers={1: "skip_attn", 2: LayerOp("skip_attn", scope="generated")}),  # two scopes
        Plan(layers={1: LayerOp("parallel_blocks", average=True)}),  # the space does not average
        Plan(layers={2: "skip_attn"}, scope="prompt"),  # not a scope of the space
        Plan(drop=DropSpec(2, 3)),
        Plan(prune=PruneSpec(method="magnitude", sparsity=0.3)),  # sparsity not offered
        Plan(prune=PruneSpec(method="wanda", sparsity=0.5)),  # method not offered
    ]
    for plan in outside:
        assert space.params_for(plan, 5) is None, plan.describe()
    paper = space_from(write_yaml, TINY_PAPER)
    assert paper.params_for(Plan(layers={5: "skip_block"}), 8) is None  # not an interval pattern here
    assert paper.params_for(Plan.from_pattern(3, 2, 7, "skip_block", "generated", 8), 8) == {
        "paper.mode": "skip_block", "paper.skip_interval": 3, "paper.start_layer": 0,
        "paper.end_layer": 7, "scope": "generated"}  # the first parameters giving layers 3 and 6


@pytest.mark.parametrize("text, num_layers, expected_size",
                         [(TINY_PER_LAYER, 5, 92), (TINY_PAPER, 8, None), (TINY_TOKENS, 5, 135)],
                         ids=["per_layer", "paper", "tokens"])
def test_grid_sampler_enumerates_every_distinct_plan(write_yaml, text, num_layers, expected_size):
    space = space_from(write_yaml, text)
    grid = space.grid(num_layers)
    points = math.prod(len(v) for v in grid.values())
    keys: set[str] = set()

    def objective(trial: optuna.Trial) -> float:
        plan = space.suggest(trial, num_layers)
        if plan.key() not in keys:
            keys.add(plan.key())
            assert space.params_for(plan, num_layers) is not None, plan.describe()
        return objective_value(plan)

    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    study.optimize(objective, n_trials=points + 5)  # the sampler stops the study when the grid is done
    assert len(study.trials) == points
    assert len(keys) == space.size(num_layers)
    if expected_size is not None:  # counted by hand next to the space's text
        assert space.size(num_layers) == expected_size


# --------------------------------------------------------------------------------------
# Token keys: visual_tokens and early_exit
# --------------------------------------------------------------------------------------

EVERY_LAYER = """\
version: 1
layers: {from: 0, to: -1}
ops: [keep, skip_block, skip_attn, parallel_blocks]
scope: [all, generated]
visual_tokens: {keep: [1.0, 0.5, 0.0], after_layer: {low: 1, high: -1}, rank: [attention, uniform]}
early_exit: {layer: [none, 0, 2, 3, -2]}
"""

SMALL_EVERY_LAYER = """\
version: 1
layers: {from: 0, to: -1}
ops: [keep, skip_attn, parallel_blocks]
scope: [all, generated]
visual_tokens: {keep: [1.0, 0.5, 0.0], after_layer: {low: 0, high: -1}, rank: [attention, uniform]}
early_exit: {layer: [none, 0, -2]}
"""

TOKENS_PAPER = TINY_PAPER + """\
visual_tokens: {keep: [1.0, 0.5], after_layer: {low: 1, high: -1}, rank: [attention, uniform]}
early_exit: {layer: [none, 1, 2, -2]}
"""


def layer_ops(num_layers: int, ops: dict[int, str] | None = None) -> dict[str, str]:
    """``layer_XX.op`` of every layer: ``ops`` where given, else keep (extra ones a FixedTrial ignores)."""
    return {layer_param(i): (ops or {}).get(i, "keep") for i in range(num_layers)}


def fixed(space: Space, num_layers: int, params: dict) -> tuple[Plan, dict]:
    """The plan of a FixedTrial of ``params`` and the parameters it suggested."""
    trial = optuna.trial.FixedTrial(params)
    plan = space.suggest(trial, num_layers)
    return plan.validate(num_layers), dict(trial.params)


def test_token_parameters_are_named_and_conditional(write_yaml):
    space = space_from(write_yaml, TINY_TOKENS)
    assert space.grid(5) == {"layer_01.op": ["keep", "skip_attn", "parallel_blocks"],
                             "layer_02.op": ["keep", "skip_attn", "parallel_blocks"],
                             "layer_03.op": ["keep", "skip_attn"],
                             "visual_tokens.keep": [1.0, 0.5], "visual_tokens.after_layer": [2, 3],
                             "visual_tokens.rank": ["attention", "uniform"], "early_exit.layer": ["none", 1, 2]}
    ops = {"layer_01.op": "keep", "layer_02.op": "keep", "layer_03.op": "keep"}
    tokens = {"visual_tokens.keep": 0.5, "visual_tokens.after_layer": 3, "visual_tokens.rank": "uniform",
              "early_exit.layer": 2}
    plan, used = fixed(space, 5, {**ops, **tokens})
    assert plan == Plan(visual_tokens=VisualTokensSpec(3, 0.5, "uniform"), early_exit=EarlyExitSpec(2))
    assert used == {**ops, **tokens}
    # keep 1.0: no token dropping, and after_layer and rank are not suggested; 'none': no early exit
    plan, used = fixed(space, 5, {**ops, **tokens, "visual_tokens.keep": 1.0, "early_exit.layer": "none"})
    assert plan == Plan() and used == {**ops, "visual_tokens.keep": 1.0, "early_exit.layer": "none"}
    study = optuna.create_study()  # the same with a real trial
    study.enqueue_trial({**ops, "visual_tokens.keep": 1.0, "early_exit.layer": 1})
    trial = study.ask()
    assert space.suggest(trial, 5) == Plan(early_exit=EarlyExitSpec(1))
    assert "visual_tokens.after_layer" not in trial.params and "visual_tokens.rank" not in trial.params


def test_fixed_token_choices_are_not_parameters_and_sizes_multiply(write_yaml):
    space = space_from(write_yaml, "version: 1\nops: keep\nvisual_tokens: {keep: [1.0, 0.5, 0.0], after_layer: "
                                   "{low: 1, high: -2}, rank: [attention, uniform]}\nearly_exit: {layer: [none, -2]}\n")
    assert space.grid(8) == {"visual_tokens.keep": [1.0, 0.5, 0.0], "visual_tokens.after_layer": [1, 2, 3, 4, 5, 6],
                             "visual_tokens.rank": ["attention", "uniform"], "early_exit.layer": ["none", 6]}
    # no layer op: visual tokens 1 (none dropped) + 6 layers * 2 ranks (keep 0.5) + 6 * 1 (keep 0: uniform only),
    # times early exit none or after 6
    assert space.size(8) == (1 + 6 * 2 + 6) * 2
    assert space.size(32) == (1 + 30 * 2 + 30) * 2
    from_zero = space_from(write_yaml, "version: 1\nops: keep\nvisual_tokens: {keep: [1.0, 0.5, 0.0], after_layer: "
                                       "[0, 2], rank: [attention, uniform]}\n", name="spaces/zero.yaml")
    assert from_zero.size(8) == 1 + 2 * 1 + 2 + 1  # none; after 0: uniform only; after 2: 0.5 two ways, 0 one
    fixed_only = space_from(write_yaml, "version: 1\nops: [keep, skip_ffn]\nlayers: [2]\n"
                                        "visual_tokens: {keep: 0.5, after_layer: 2, rank: uniform}\n"
                                        "early_exit: {layer: 4}\n")
    assert fixed_only.grid(8) == {"layer_02.op": ["keep", "skip_ffn"]} and fixed_only.size(8) == 2
    plan, _ = fixed(fixed_only, 8, {"layer_02.op": "skip_ffn"})
    assert plan == Plan(layers={2: "skip_ffn"}, visual_tokens=VisualTokensSpec(2, 0.5, "uniform"),
                        early_exit=EarlyExitSpec(4))


def test_rank_is_uniform_where_attention_cannot_rank(write_yaml):
    """Rule 2: layer after_layer - 1 skips prompt attention, or keep 0 -> rank not suggested, uniform."""
    space = space_from(write_yaml, EVERY_LAYER)
    n = 6
    tokens = {"visual_tokens.keep": 0.5, "visual_tokens.after_layer": 3, "visual_tokens.rank": "attention",
              "early_exit.layer": "none"}
    for op, scope, rank in [("skip_attn", "all", "uniform"), ("skip_block", "all", "uniform"),
                            ("skip_attn", "generated", "attention"), ("skip_block", "generated", "attention"),
                            ("keep", "all", "attention")]:
        plan, used = fixed(space, n, {**layer_ops(n, {2: op}), "scope": scope, **tokens})
        assert plan.visual_tokens == VisualTokensSpec(3, 0.5, rank), (op, scope)
        assert ("visual_tokens.rank" in used) == (rank == "attention"), (op, scope)
    with pytest.raises(ConfigError, match="use rank: uniform"):  # what the rule avoids
        Plan(layers={2: "skip_attn"}, visual_tokens=VisualTokensSpec(3, 0.5, "attention"))
    plan, used = fixed(space, n, {**layer_ops(n), "scope": "all", **tokens, "visual_tokens.keep": 0.0})
    assert plan.visual_tokens == VisualTokensSpec(3, 0.0, "uniform") and "visual_tokens.rank" not in used
    # after_layer 0: no layer before it to rank by
    zero = space_from(write_yaml, EVERY_LAYER.replace("{low: 1, high: -1}", "[0, 3]"), name="spaces/zero.yaml")
    assert zero.grid(n)["visual_tokens.after_layer"] == [0, 3]  # the space really offers layer 0
    plan, used = fixed(zero, n, {**layer_ops(n), "scope": "all", **tokens, "visual_tokens.after_layer": 0})
    assert plan.visual_tokens == VisualTokensSpec(0, 0.5, "uniform") and "visual_tokens.rank" not in used
    with pytest.raises(ConfigError, match="use rank: uniform"):
        Plan(visual_tokens=VisualTokensSpec(0, 0.5, "attention"))
    # only the layer right before after_layer matters
    plan, used = fixed(space, n, {**layer_ops(n, {1: "skip_attn", 3: "skip_block"}), "scope": "all", **tokens})
    assert plan.visual_tokens.rank == "attention" and "visual_tokens.rank" in used


def test_parallel_pairs_move_the_token_boundaries(write_yaml):
    """Rule 1: a pair straddling after_layer or the exit layer moves it one layer later, or drops the key."""
    space = space_from(write_yaml, EVERY_LAYER)
    n = 6
    tokens = {"visual_tokens.keep": 0.5, "visual_tokens.rank": "attention", "scope": "all"}
    with pytest.raises(ConfigError, match="drops image tokens between them"):  # what the rule avoids
        Plan(layers={2: "parallel_blocks"}, visual_tokens=VisualTokensSpec(3, 0.5))
    with pytest.raises(ConfigError, match="lets generated tokens leave between them"):
        Plan(layers={2: "parallel_blocks"}, early_exit=EarlyExitSpec(2))
    pair = layer_ops(n, {2: "parallel_blocks"})
    plan, used = fixed(space, n, {**pair, **tokens, "visual_tokens.after_layer": 3, "early_exit.layer": "none"})
    assert plan.visual_tokens == VisualTokensSpec(4, 0.5, "attention")  # ranked by layer 3, the partner
    assert used["visual_tokens.after_layer"] == 3 and "layer_03.op" not in used
    plan, _ = fixed(space, n, {**pair, **tokens, "visual_tokens.keep": 1.0, "early_exit.layer": 2})
    assert plan.early_exit == EarlyExitSpec(3) and plan.visual_tokens is None
    # a boundary that is not straddled stays: after_layer 2 and an exit after 3 (the partner)
    plan, _ = fixed(space, n, {**pair, **tokens, "visual_tokens.after_layer": 2, "early_exit.layer": 3})
    assert plan.visual_tokens.after_layer == 2 and plan.early_exit == EarlyExitSpec(3)
    # moved past the model: no token dropping (rank not suggested) / no early exit in that trial
    last_pair = layer_ops(n, {4: "parallel_blocks"})
    plan, used = fixed(space, n, {**last_pair, **tokens, "visual_tokens.after_layer": 5, "early_exit.layer": 4})
    assert plan == Plan(layers={4: "parallel_blocks"})
    assert "visual_tokens.rank" not in used and used["visual_tokens.after_layer"] == 5


@pytest.mark.parametrize("sampler", ["random", "tpe"])
@pytest.mark.parametrize("text, num_layers", [(EVERY_LAYER, 6), (TOKENS_PAPER, 8), ("tokens.yaml", 8)],
                         ids=["per_layer", "paper", "shipped"])
def test_samplers_suggest_valid_token_plans(write_yaml, sampler, text, num_layers):
    space = Space.load(REPO_ROOT / "spaces" / text) if text == "tokens.yaml" else space_from(write_yaml, text)
    plans = sampled_plans(space, num_layers, sampler, seed=5, startup=20, n_trials=120)
    moved = uniform_by_rule = 0
    for plan, params in plans:
        assert plan.validate(num_layers) is plan and Plan.from_dict(plan.to_dict()) == plan
        v = plan.visual_tokens
        if v is not None:
            moved += v.after_layer != params["visual_tokens.after_layer"]
            uniform_by_rule += "visual_tokens.rank" not in params
        replay = space.params_for(plan, num_layers)
        assert replay is not None, plan.describe()
        assert space.suggest(optuna.trial.FixedTrial(replay), num_layers) == plan
    assert sum(p.visual_tokens is not None for p, _ in plans) >= 20
    assert sum(p.visual_tokens is None for p, _ in plans) >= 10
    assert sum(p.early_exit is not None for p, _ in plans) >= 20
    assert sum(p.early_exit is None for p, _ in plans) >= 10
    assert len({p.visual_tokens.rank for p, _ in plans if p.visual_tokens is not None}) == 2
    assert moved and uniform_by_rule  # both rules met


MIXED_SCOPES = """\
version: 1
layers: {from: 0, to: -1}
ops: [keep, skip_block, skip_ffn@visual, parallel_blocks@visual]
scope: [all, generated]
visual_tokens: {keep: [1.0, 0.5], after_layer: [1, 2], rank: [attention, uniform]}
early_exit: {layer: [none, 1]}
"""

OWN_SCOPES_ONLY = """\
version: 1
layers: {from: 0, to: -1}
ops: [keep, skip_block@visual, skip_attn@visual, skip_ffn@generated, parallel_blocks@visual]
scope: [all, prompt]          # searched, but no op takes it: every plan is counted once
visual_tokens: {keep: [1.0, 0.0], after_layer: [2]}
"""


@pytest.mark.parametrize("text, num_layers", [
    (SMALL_EVERY_LAYER, 4),  # with the cases moving a boundary out of the model (a pair at layer 2)
    (TOKENS_PAPER, 6),
    (MIXED_SCOPES, 4),
    (OWN_SCOPES_ONLY, 4),
], ids=["per_layer", "paper", "mixed-scopes", "own-scopes-only"])
def test_full_grid_gives_size_plans_and_each_round_trips(write_yaml, text, num_layers):
    space = space_from(write_yaml, text)
    grid = space.grid(num_layers)
    plans: dict[Plan, dict] = {}
    for values in itertools.product(*grid.values()):
        plan, used = fixed(space, num_layers, dict(zip(grid, values)))
        plans.setdefault(plan, used)
    assert len(plans) == space.size(num_layers)
    for plan in plans:
        params = space.params_for(plan, num_layers)
        assert params is not None and fixed(space, num_layers, params)[0] == plan, plan.describe()


def test_ops_with_their_own_scope_mix_scopes_in_one_plan(write_yaml):
    """``op@scope`` values are the layer parameter's values (names unchanged); an op written alone
    takes the plan-wide scope decision, so one plan mixes scopes; params_for gives each back."""
    space = space_from(write_yaml, MIXED_SCOPES)
    grid = space.grid(4)
    assert grid["layer_00.op"] == ["keep", "skip_block", "skip_ffn@visual", "parallel_blocks@visual"]
    assert grid["layer_03.op"] == ["keep", "skip_block", "skip_ffn@visual"]  # no partner after the last layer
    plan, used = fixed(space, 4, {"layer_00.op": "skip_ffn@visual", "layer_01.op": "skip_block",
                                  "layer_02.op": "parallel_blocks@visual", "scope": "generated",
                                  "visual_tokens.keep": 1.0, "early_exit.layer": "none"})
    assert plan == Plan(layers={0: LayerOp("skip_ffn", "visual"), 1: LayerOp("skip_block", "generated"),
                                2: LayerOp("parallel_blocks", "visual")})
    assert "layer_03.op" not in used  # the pair's partner
    assert space.params_for(plan, 4) == {**used}
    # two ops written alone must share the plan-wide scope; an op@scope the space lacks is outside it
    assert space.params_for(Plan(layers={0: LayerOp("skip_block", "all"), 1: LayerOp("skip_block", "generated")}),
                            4) is None
    assert space.params_for(Plan(layers={0: LayerOp("skip_attn", "visual")}), 4) is None
    assert space.params_for(Plan(layers={0: LayerOp("skip_ffn", "all")}), 4) is None
    shipped = Space.load(REPO_ROOT / "spaces" / "joint.yaml")
    assert any("@visual" in v for v in shipped.grid(8)["layer_00.op"])


def test_params_for_token_plans(write_yaml):
    space = space_from(write_yaml, TINY_TOKENS)
    # the first parameters (in the order of the values) giving the plan: after_layer 2 and exit 1 both move
    plan = Plan(layers={1: "parallel_blocks"}, visual_tokens=VisualTokensSpec(3, 0.5), early_exit=EarlyExitSpec(2))
    assert space.params_for(plan, 5) == {"layer_01.op": "parallel_blocks", "layer_03.op": "keep",
                                         "visual_tokens.keep": 0.5, "visual_tokens.after_layer": 2,
                                         "visual_tokens.rank": "attention", "early_exit.layer": 1}
    assert space.params_for(Plan(layers={2: "skip_attn"}, visual_tokens=VisualTokensSpec(3, 0.5, "uniform")), 5) == {
        "layer_01.op": "keep", "layer_02.op": "skip_attn", "layer_03.op": "keep", "visual_tokens.keep": 0.5,
        "visual_tokens.after_layer": 3, "early_exit.layer": "none"}  # rank: uniform by rule 2
    inside = [Plan(layers={2: "parallel_blocks"}, visual_tokens=VisualTokensSpec(4, 0.5), early_exit=EarlyExitSpec(3)),
              Plan(visual_tokens=VisualTokensSpec(2, 0.5, "uniform"))]
    outside = [
        Plan(visual_tokens=VisualTokensSpec(2, 0.25)),  # keep not offered
        Plan(visual_tokens=VisualTokensSpec(1, 0.5)),  # after_layer not offered
        Plan(visual_tokens=VisualTokensSpec(4, 0.5)),  # 4 only after a pair at 2
        Plan(early_exit=EarlyExitSpec(3)),  # likewise
        Plan(early_exit=EarlyExitSpec(0)),  # not offered
        Plan(layers={1: "parallel_blocks"}, early_exit=EarlyExitSpec(3)),  # exits 1 and 2 both give 2 there
    ]
    for plan in inside:
        assert space.params_for(plan, 5) is not None, plan.describe()
    for plan in outside:
        assert space.params_for(plan, 5) is None, plan.describe()
    every = space_from(write_yaml, EVERY_LAYER)
    zero = Plan(visual_tokens=VisualTokensSpec(2, 0.0, "attention"))
    assert zero.visual_tokens.rank == "uniform"  # canonical: nothing kept, nothing ranked (rule 2 agrees)
    params = every.params_for(zero, 6)
    assert params is not None and params["visual_tokens.keep"] == 0.0 and "visual_tokens.rank" not in params
    no_tokens = space_from(write_yaml, TINY_PER_LAYER)
    assert no_tokens.params_for(Plan(visual_tokens=VisualTokensSpec(2, 0.5)), 5) is None
    assert no_tokens.params_for(Plan(early_exit=EarlyExitSpec(2)), 5) is None


def test_token_layer_checks_name_file_key_and_count(write_yaml):
    path = write_yaml("version: 1\nops: keep\nvisual_tokens: {keep: 0.5, after_layer: [2, 8, -9]}\n"
                      "early_exit: {layer: [none, 6, 7, -9]}\n", name="spaces/t.yaml")
    space = Space.load(path)
    space.check(9)  # after_layer 2, 8, 0; exit after 6, 7 or 0 (< 8)
    with pytest.raises(ConfigError) as info:
        space.check(8)
    assert {p.key: p.rule for p in info.value.problems}.keys() == {
        "visual_tokens.after_layer[1]", "visual_tokens.after_layer[2]", "early_exit.layer[2]", "early_exit.layer[3]"}
    rules = {p.key: p.rule for p in info.value.problems}
    assert all(p.file == str(path) and "8 decoder layers" in p.rule for p in info.value.problems)
    assert "`0 <= after_layer < num_layers` must hold once resolved" in rules["visual_tokens.after_layer[1]"]
    assert "but got after_layer=-9" in rules["visual_tokens.after_layer[2]"]
    assert "`0 <= layer < num_layers - 1` must hold once resolved" in rules["early_exit.layer[2]"]
    assert "exiting after the last layer is no exit" in rules["early_exit.layer[2]"]
    with pytest.raises(ConfigError) as info:
        space.suggest(optuna.create_study().ask(), 8)
    ranges = Space.load(write_yaml("version: 1\nops: keep\nvisual_tokens: {keep: 0.5, after_layer: [2, -6]}\n"
                                   "early_exit: {layer: {low: 5, high: -4}}\n", name="spaces/r.yaml"))
    with pytest.raises(ConfigError) as info:
        ranges.grid(8)
    rules = {p.key: p.rule for p in info.value.problems}
    assert "must offer each layer only once after resolving" in rules["visual_tokens.after_layer"]
    assert "must offer at least one layer once resolved" in rules["early_exit.layer"]


# --------------------------------------------------------------------------------------
# Malformed spaces
# --------------------------------------------------------------------------------------

BAD = [
    ("version: 2\nops: [keep]\n", "version", "`version == 1` must hold"),
    ("version: 1\nopts: [keep]\n", "opts", "did you mean 'ops'?"),
    ("version: 1\nops: []\n", "ops", "must list at least one op, but got an empty list"),
    ("version: 1\nops: [keep, skip_blok]\n", "ops[1]", "did you mean 'skip_block'?"),
    ("version: 1\nops: [keep, keep]\n", "ops", "must list each op once"),
    ("version: 1\nops: [keep, skip_blok@visual]\n", "ops[1]", "did you mean 'skip_block'? (in 'skip_blok@visual'"),
    ("version: 1\nops: [keep, skip_ffn@visul]\n", "ops[1]", "the scope after '@' in 'skip_ffn@visul' must be one of"),
    ("version: 1\nops: [keep, skip_ffn@visul]\n", "ops[1]", "did you mean 'visual'?"),
    ("version: 1\nops: [keep@visual, skip_ffn]\n", "ops[0]", "'keep' takes no scope"),
    ("version: 1\nops: [skip_block, skip_block@generated]\nscope: [all, generated]\n", "ops[1]",
     "offers skip_block with scope 'generated' twice"),
    ("version: 1\nops: [keep, skip_ffn@visual, skip_ffn@visual]\n", "ops", "must list each op once"),
    ("version: 1\nops: [keep, 5]\n", "ops[1]", "integer 5"),
    ("version: 1\nops: [keep, skip_ffn@visual]\naverage: true\n", "average", "applies only to op 'parallel_blocks'"),
    ("version: 1\nops: keep\nscope: [all, generatd]\n", "scope[1]", "did you mean 'generated'?"),
    ("version: 1\nops: keep\nlayers: {form: 1}\n", "layers.form", "did you mean 'from'?"),
    ("version: 1\nops: keep\nlayers: {from: 5, to: 2}\n", "layers", "but got from=5, to=2"),
    ("version: 1\nops: [keep, skip_ffn]\naverage: true\n", "average", "applies only to op 'parallel_blocks'"),
    ("version: 1\nops: keep\nmode: [skip_block]\n", "mode", "add `kind: paper`"),
    ("version: 1\nkind: papr\nops: keep\n", "kind", "did you mean 'paper'?"),
    ("version: 1\nops: keep\nprune: {method: [none, wand], sparsity: 0.5}\n", "prune.method[1]",
     "did you mean 'wanda'?"),
    ("version: 1\nops: keep\nprune: {method: magnitude, structure: [2:4], sparsity: 0.5}\n",
     "prune.structure[0]", "quote it"),
    ("version: 1\nops: keep\nprune: {method: magnitude, structure: [blocky], sparsity: 0.5}\n",
     "prune.structure[0]", "must be one of 'unstructured', '2:4', 'ffn_channels'"),
    ("version: 1\nops: keep\nprune: {method: magnitude, sparsity: {low: 0.5, high: 0.2, step: 0.1}}\n",
     "prune.sparsity.high", "`low <= high` must hold, but got low=0.5, high=0.2"),
    ("version: 1\nops: keep\nprune: {method: magnitude, sparsity: {low: 0.1, high: 0.5, step: 0}}\n",
     "prune.sparsity.step", "`step > 0` must hold, but got step=0.0"),
    ("version: 1\nops: keep\nprune: {method: magnitude, sparsity: {low: 0.1, high: 0.75, step: 0.1}}\n",
     "prune.sparsity.step", "must be a multiple of `step`"),
    ("version: 1\nops: keep\nprune: {method: magnitude, sparsity: {low: 0.5, high: 1.0, step: 0.5}}\n",
     "prune.sparsity.high", "`0 <= high < 1` must hold"),
    ("version: 1\nops: keep\nprune: {method: magnitude, sparsity: [0.5, -0.1]}\n", "prune.sparsity[1]",
     "`0 <= sparsity < 1` must hold"),
    ("version: 1\nops: keep\nprune: {method: [magnitude]}\n", "prune.sparsity", "is required"),
    ("version: 1\nops: keep\nprune: {method: magnitude, structure: \"2:4\", sparsity: 0.3}\n", "prune.sparsity",
     "is not used"),
    ("version: 1\nops: keep\nprune: {method: magnitude, sparsity: 0.3, calibration: {samples: 8}}\n",
     "prune.calibration", "applies only to method 'wanda'"),
    ("version: 1\nkind: paper\nmode: [keep]\nskip_interval: 2\n", "mode[0]", "must be an op that changes"),
    ("version: 1\nkind: paper\nmode: skip_block\nskip_interval: {low: 3, high: 1}\n", "skip_interval.high",
     "`low <= high` must hold, but got low=3, high=1"),
    ("version: 1\nkind: paper\nmode: skip_block\nskip_interval: [0, 2]\n", "skip_interval[0]",
     "`skip_interval >= 1` must hold"),
    ("version: 1\nkind: paper\nmode: skip_block\nskip_interval: {low: 1, high: 4, step: 0}\n",
     "skip_interval.step", "`step >= 1` must hold"),
    ("version: 1\nkind: paper\nmode: skip_block\nskip_interval: 2\nstart_layer: 8\nend_layer: [4, 12]\n",
     "end_layer", "`start_layer < end_layer` must hold for every choice of both"),
    ("version: 1\nkind: paper\nmode: skip_block\nskip_interval: 2\nops: [keep]\n", "ops",
     "it is a setting of `kind: per_layer` spaces"),
    ("version: 1\nops: keep\nvisual_tokens: {keep: [0.5, 1.5], after_layer: 2}\n", "visual_tokens.keep[1]",
     "`0 <= keep <= 1` must hold"),
    ("version: 1\nops: keep\nvisual_tokens: {keep: {low: 0.5, high: 1.5, step: 0.5}, after_layer: 2}\n",
     "visual_tokens.keep.high", "but got high=1.5"),
    ("version: 1\nops: keep\nvisual_tokens: {keep: {low: 0.1, high: 0.5, step: 0.3}, after_layer: 2}\n",
     "visual_tokens.keep.step", "must be a multiple of `step`"),
    ("version: 1\nops: keep\nvisual_tokens: {keep: 1.0, after_layer: 2}\n", "visual_tokens.keep",
     "must offer a value below 1"),
    ("version: 1\nops: keep\nvisual_tokens: {keep: [0.5, 0.5], after_layer: 2}\n", "visual_tokens.keep",
     "must list each value once"),
    ("version: 1\nops: keep\nvisual_tokens: {keep: 0.5}\n", "visual_tokens.after_layer", "is required but missing"),
    ("version: 1\nops: keep\nvisual_tokens: {keep: 0.5, after_layer: [1, 1.5]}\n", "visual_tokens.after_layer[1]",
     "must be an integer, but got number 1.5"),
    ("version: 1\nops: keep\nvisual_tokens: {keep: 0.5, after_layer: [-1, -1]}\n", "visual_tokens.after_layer",
     "must list each value once"),
    ("version: 1\nops: keep\nvisual_tokens: {keep: 0.5, after_layer: {low: 3, high: 1}}\n",
     "visual_tokens.after_layer.high", "`low <= high` must hold"),
    ("version: 1\nops: keep\nvisual_tokens: {keep: 0.5, after_layer: 2, rank: [attention, fastv]}\n",
     "visual_tokens.rank[1]", "must be one of 'attention', 'uniform'"),
    ("version: 1\nops: keep\nvisual_tokens: {keep: 0.5, after_layer: 2, rank: [uniform, uniform]}\n",
     "visual_tokens.rank", "must list each rank once"),
    ("version: 1\nops: keep\nvisual_tokens: {keep: 0.5, after_layer: 2, ranks: uniform}\n",
     "visual_tokens.ranks", "did you mean 'rank'?"),
    ("version: 1\nops: keep\nearly_exit: {layer: [none]}\n", "early_exit.layer", "must offer a layer besides 'none'"),
    ("version: 1\nops: keep\nearly_exit: {layer: [none, nope]}\n", "early_exit.layer[1]", "did you mean 'none'?"),
    ("version: 1\nops: keep\nearly_exit: {layer: [-2, -1]}\n", "early_exit.layer[1]", "`layer != -1` must hold"),
    ("version: 1\nops: keep\nearly_exit: {layer: 2.5}\n", "early_exit.layer", "but got number 2.5"),
    ("version: 1\nops: keep\nearly_exit: {layer: 2, scope: all}\n", "early_exit.scope",
     "must be one of 'generated'"),
    ("version: 1\nkind: paper\nmode: skip_block\nskip_interval: 2\nvisual_tokens: {keep: [0.5, 2], after_layer: 0}\n",
     "visual_tokens.keep[1]", "`0 <= keep <= 1` must hold"),
]


@pytest.mark.parametrize("text, key, rule", BAD, ids=[f"{i:02d}-{b[1]}" for i, b in enumerate(BAD)])
def test_malformed_space_names_key_and_rule(write_yaml, text, key, rule):
    path, problems = problems_of(write_yaml, text)
    hits = [p for p in problems if p.key == key and rule in p.rule]
    assert hits, [str(p) for p in problems]
    assert all(p.file == str(path) for p in problems)


def test_all_problems_are_reported_together(write_yaml):
    _, problems = problems_of(write_yaml, "version: 3\nops: [keep, skip_blok]\nscope: []\n"
                                          "prune: {method: wand, sparsity: {low: 0.2, high: 0.1, step: -1}}\n")
    keys = {p.key for p in problems}
    assert keys >= {"version", "ops[1]", "scope", "prune.method", "prune.sparsity.high", "prune.sparsity.step"}


def test_layer_count_checks_name_file_key_and_count(write_yaml):
    path = write_yaml("version: 1\nops: [keep, skip_attn]\nlayers: {from: 5, to: -4}\n", name="spaces/l.yaml")
    space = Space.load(path)  # mixed signs: structurally fine
    space.check(12)  # layers 5..8
    with pytest.raises(ConfigError) as info:
        space.check(8)  # layers 5..4
    (problem,) = info.value.problems
    assert problem.file == str(path) and problem.key == "layers"
    assert "`from <= to` must hold" in problem.rule and "8 decoder layers" in problem.rule
    with pytest.raises(ConfigError) as info:
        space.suggest(optuna.create_study().ask(), 3)
    assert {p.key for p in info.value.problems} == {"layers.from", "layers.to"}
    assert "3 decoder layers" in str(info.value)


def test_paper_start_must_stay_below_end_once_resolved(write_yaml):
    paper = space_from(write_yaml, "version: 1\nkind: paper\nmode: skip_block\nskip_interval: 2\n"
                                   "start_layer: [0, -3]\nend_layer: 6\n")
    paper.check(8)  # -3 is layer 5 < 6
    with pytest.raises(ConfigError) as info:
        paper.check(9)  # -3 is layer 6, not below 6
    (problem,) = info.value.problems
    assert problem.key == "end_layer" and "start_layer=6, end_layer=6" in problem.rule
    assert "9 decoder layers" in problem.rule
    with pytest.raises(ConfigError) as info:
        paper.size(4)  # end_layer 6 is past the last layer, start -3 is layer 1
    assert [p.key for p in info.value.problems] == ["end_layer"]


# --------------------------------------------------------------------------------------
# searchskip validate
# --------------------------------------------------------------------------------------


def test_space_kind_is_detected_by_its_keys(tmp_path):
    assert validate.detect_kind(tmp_path / "x.yaml", {"version": 1, "ops": ["keep"], "scope": "all"}) == "space"
    assert validate.detect_kind(tmp_path / "x.yaml", {"version": 1, "kind": "paper", "mode": "skip_ffn"}) == "space"
    assert validate.detect_kind(tmp_path / "x.yaml", {"version": 1, "layers": {3: "skip_block"}}) == "plan"


def test_validate_a_bad_space_exits_2_without_traceback(write_yaml, tmp_path):
    bad = write_yaml("version: 1\nops: [keep, skip_blok]\nprune: {method: magnitude, sparsity: 1.5}\n",
                     name="spaces/bad.yaml")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run([sys.executable, "-m", "searchskip", "validate", str(bad)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert f"{bad}: ops[1]: must be one of" in done.stderr and "did you mean 'skip_block'?" in done.stderr
    assert f"{bad}: prune.sparsity: `0 <= sparsity < 1` must hold" in done.stderr
    assert "1 of 1 file failed validation" in done.stderr


@pytest.mark.parametrize("name", ["tpe", "nsga2", "gp", "random", "grid"])
def test_every_job_sampler_searches_the_shipped_space(name, repo_root):
    """Each `search.sampler` a job may name is built by `make_sampler` and yields valid plans."""
    from types import SimpleNamespace

    from searchskip.search.samplers import sampler_for

    space = Space.load(repo_root / "spaces/sublayer.yaml")
    sampler = sampler_for(SimpleNamespace(sampler=name, seed=3), space, 8)
    study = optuna.create_study(sampler=sampler)
    keys = []

    def objective(trial: optuna.Trial) -> float:
        plan = space.suggest(trial, 8)
        keys.append(plan.validate(8).key())
        return objective_value(plan)

    study.optimize(objective, n_trials=12)
    assert len(study.trials) == 12 and len(set(keys)) > 1
