"""Compression plans: canonical form, stable keys, round trips, the paper's patterns and every refusal."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import pytest

from searchskip import cli, plan as plan_module
from searchskip.commands import validate
from searchskip.config.typed import build
from searchskip.errors import ConfigError, Problem
from searchskip.plan import (
    KEEP, OPS, PARALLEL_BLOCKS, PRUNE_TARGETS, SCOPES, CalibrationSpec, DropSpec, LayerOp, Plan, PruneSpec,
)

EMBEDDED_LAYERS = 8
"""Decoder layers of the embedded model the shipped plans are written for."""

SHIPPED = ("skip_block", "skip_attn", "skip_ffn", "parallel_attn_ffn", "parallel_blocks", "drop", "prune_wanda",
           "prune_2to4", "prune_ffn_channels", "scoped", "paper_interval")


def plans_dir(repo_root: Path) -> Path:
    return repo_root / "spaces" / "plans"


def shipped_files(repo_root: Path) -> list[Path]:
    files = sorted(plans_dir(repo_root).glob("*.yaml"))
    assert files, f"no plan files in {plans_dir(repo_root)}"
    return files


def problems_of(text: str, file: str = "bad.yaml") -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        Plan.from_yaml_text(text, file)
    assert info.value.problems
    return info.value.problems


def rules_at(problems: list[Problem], key: str) -> list[str]:
    return [p.rule for p in problems if p.key == key]


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------


def test_op_and_scope_names_are_module_constants():
    assert OPS == ("keep", "skip_block", "skip_attn", "skip_ffn", "parallel_attn_ffn", "parallel_blocks")
    assert SCOPES == ("all", "generated", "prompt", "non_visual", "visual")
    assert (plan_module.SKIP_BLOCK, plan_module.SKIP_ATTN, plan_module.SKIP_FFN) == OPS[1:4]
    assert (plan_module.PARALLEL_ATTN_FFN, plan_module.PARALLEL_BLOCKS) == OPS[4:]
    assert plan_module.SCOPE_NON_VISUAL == "non_visual" and plan_module.SCOPE_GENERATED == "generated"
    assert plan_module.PRUNE_STRUCTURES == ("unstructured", "2:4", "ffn_channels")
    assert plan_module.PLAN_KEYS == {"version", "scope", "layers", "drop", "prune", "visual_tokens", "early_exit"}


# --------------------------------------------------------------------------------------
# Shipped example plans
# --------------------------------------------------------------------------------------


def test_every_example_plan_is_shipped(repo_root):
    names = {p.stem for p in shipped_files(repo_root)}
    assert set(SHIPPED) <= names, sorted(set(SHIPPED) - names)


def test_shipped_plans_load_validate_and_round_trip(repo_root):
    for path in shipped_files(repo_root):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# ") and len(first) > 10, f"{path.name} must start with a comment saying what it does"
        plan = Plan.load(path)
        assert plan.validate(EMBEDDED_LAYERS) is plan
        assert not plan.is_empty, path.name
        assert Plan.from_dict(plan.to_dict()) == plan, path.name
        assert Plan.from_yaml_text(plan.to_yaml()) == plan, path.name
        assert Plan.from_json(plan.to_json()) == plan, path.name
        assert Plan.from_json(plan.to_json(indent=2)).key() == plan.key(), path.name
        assert plan.describe(), path.name


def test_shipped_plans_say_what_their_names_say(repo_root):
    load = {name: Plan.load(plans_dir(repo_root) / f"{name}.yaml") for name in SHIPPED}
    for name in ("skip_block", "skip_attn", "skip_ffn", "parallel_attn_ffn", "parallel_blocks"):
        assert {op.op for _, op in load[name].layers} == {name}, name
    assert load["drop"].dropped_layers() == {5, 6} and not load["drop"].layers
    assert load["parallel_blocks"].op_for(5).average and not load["parallel_blocks"].op_for(2).average
    wanda = load["prune_wanda"].prune
    assert (wanda.method, wanda.structure, wanda.sparsity) == ("wanda", "unstructured", 0.3)
    assert wanda.targets == PRUNE_TARGETS
    assert wanda.calibration == CalibrationSpec(samples=128, seed=0)
    two_four = load["prune_2to4"].prune
    assert (two_four.method, two_four.structure, two_four.sparsity) == ("magnitude", "2:4", 0.5)
    assert two_four.calibration is None
    channels = load["prune_ffn_channels"].prune
    assert channels.structure == "ffn_channels" and channels.targets == ("ffn",)
    assert [channels.sparsity_for(i) for i in range(8)] == [0, 0, 0, 0, 0.25, 0.5, 0.5, 0]
    scoped = load["scoped"]
    assert {i: scoped.op_for(i).scope for i, _ in scoped.layers} == {
        1: "generated", 2: "generated", 4: "non_visual", 5: "prompt", 6: "all"}
    assert len({op.scope or scoped.scope for _, op in scoped.layers}) == 4


def test_paper_interval_example_is_the_papers_pattern(repo_root):
    shipped = Plan.load(plans_dir(repo_root) / "paper_interval.yaml")
    assert shipped == Plan.from_pattern(2, 4, EMBEDDED_LAYERS, "skip_block", num_layers=EMBEDDED_LAYERS)
    assert [i for i, _ in shipped.layers] == [6]


def test_validate_command_accepts_every_shipped_plan(repo_root, capsys):
    files = [str(p) for p in shipped_files(repo_root)]
    assert cli.main(["validate", *files]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"OK {f}" for f in files] and err == ""


# --------------------------------------------------------------------------------------
# Canonical form, equality and keys
# --------------------------------------------------------------------------------------

SAME_PLAN_SPELLINGS: list[dict[str, Any]] = [
    {"version": 1, "scope": "generated", "layers": {3: "skip_block", 5: {"op": "skip_ffn", "scope": "all"}},
     "prune": {"method": "wanda", "sparsity": 0.25}},
    {"version": 1, "layers": {5: "skip_ffn", 3: {"op": "skip_block", "scope": "generated"}, 4: "keep"},
     "prune": {"method": "wanda", "sparsity": 0.25, "targets": ["ffn", "attn"], "structure": "unstructured",
               "calibration": {"samples": 128}}},
    {"version": 1, "scope": "prompt", "layers": {3: {"op": "skip_block", "scope": "generated", "average": False},
                                                5: {"op": "skip_ffn", "scope": "all"},
                                                6: {"op": "keep", "scope": "prompt"}},
     "prune": {"method": "wanda", "sparsity": 0.25, "calibration": {"samples": 128, "seed": 0}}},
    {"version": 1, "scope": "all", "layers": {3: {"op": "skip_block", "scope": "generated"}, 5: {"op": "skip_ffn"}},
     "prune": {"method": "wanda", "sparsity": 0.25, "targets": ["attn", "ffn"]}},
]


def test_equal_plans_compare_and_hash_equal_however_written():
    plans = [Plan.from_dict(data) for data in SAME_PLAN_SPELLINGS]
    plans.append(Plan(layers={3: LayerOp("skip_block", "generated"), 5: "skip_ffn"},
                      prune=PruneSpec(method="wanda", sparsity=0.25)))
    plans.append(Plan(layers=[(5, LayerOp("skip_ffn", "all")), (3, "skip_block")], scope="generated",
                      prune=PruneSpec(method="wanda", sparsity=0.25, targets=["ffn", "attn"],
                                      calibration=CalibrationSpec())))
    assert all(p == plans[0] for p in plans)
    assert len({p.key() for p in plans}) == 1
    assert len({hash(p) for p in plans}) == 1 and len(set(plans)) == 1
    assert all(p.to_dict() == plans[0].to_dict() for p in plans)


def test_canonical_form_is_documented_shape():
    plan = Plan.from_dict(SAME_PLAN_SPELLINGS[1])
    assert plan.layers == ((3, LayerOp("skip_block", "generated")), (5, LayerOp("skip_ffn")))
    assert plan.scope == "all"  # tie between 'generated' and 'all' goes to the earlier scope
    majority = Plan.from_dict({"version": 1, "layers": {1: {"op": "skip_attn", "scope": "prompt"},
                                                        2: {"op": "skip_attn", "scope": "prompt"}, 3: "skip_ffn"}})
    assert majority.scope == "prompt"
    assert majority.layers == ((1, LayerOp("skip_attn")), (2, LayerOp("skip_attn")), (3, LayerOp("skip_ffn", "all")))
    assert Plan.from_dict({"version": 1, "scope": "generated"}).scope == "all"  # no op: the scope changes nothing


def test_layer_scope_equal_to_the_default_is_normalised_away():
    short = Plan.from_dict({"version": 1, "scope": "generated", "layers": {7: "skip_attn"}})
    explicit = Plan.from_dict({"version": 1, "scope": "generated",
                               "layers": {7: {"op": "skip_attn", "scope": "generated"}}})
    assert short == explicit and short.key() == explicit.key()
    assert short.layers == ((7, LayerOp("skip_attn", None)),)
    assert explicit.to_dict()["layers"] == {7: "skip_attn"}


def test_no_op_parts_are_removed():
    dense = Plan()
    for data in ({"version": 1}, {"version": 1, "layers": {3: "keep", 4: {"op": "keep"}}},
                 {"version": 1, "prune": {"method": "magnitude", "sparsity": 0.0}},
                 {"version": 1, "prune": {"method": "wanda", "sparsity": {3: 0.0, 4: 0}}}):
        plan = Plan.from_dict(data)
        assert plan == dense and plan.is_empty and plan.key() == dense.key(), data
    partial = Plan.from_dict({"version": 1, "prune": {"method": "magnitude", "sparsity": {3: 0.0, 4: 0.5}}})
    assert partial.prune.sparsity == ((4, 0.5),)


UNEQUAL_PLANS: list[dict[str, Any]] = [
    {"version": 1},
    {"version": 1, "layers": {3: "skip_block"}},
    {"version": 1, "layers": {4: "skip_block"}},
    {"version": 1, "layers": {3: "skip_attn"}},
    {"version": 1, "layers": {3: {"op": "skip_block", "scope": "generated"}}},
    {"version": 1, "layers": {3: {"op": "skip_block", "scope": "prompt"}}},
    {"version": 1, "layers": {3: "parallel_blocks"}},
    {"version": 1, "layers": {3: {"op": "parallel_blocks", "average": True}}},
    {"version": 1, "drop": {"start": 3, "end": 4}},
    {"version": 1, "drop": {"start": 3, "end": 5}},
    {"version": 1, "prune": {"method": "magnitude", "sparsity": 0.3}},
    {"version": 1, "prune": {"method": "wanda", "sparsity": 0.3}},
    {"version": 1, "prune": {"method": "wanda", "sparsity": 0.3, "calibration": {"samples": 64}}},
    {"version": 1, "prune": {"method": "wanda", "sparsity": 0.3, "calibration": {"seed": 1}}},
    {"version": 1, "prune": {"method": "wanda", "sparsity": 0.3, "targets": ["ffn"]}},
    {"version": 1, "prune": {"method": "wanda", "sparsity": {3: 0.3}}},
    {"version": 1, "prune": {"method": "wanda", "sparsity": 0.5, "structure": "2:4"}},
]


def test_unequal_plans_differ():
    plans = [Plan.from_dict(data) for data in UNEQUAL_PLANS]
    assert len(set(plans)) == len(plans)
    assert len({p.key() for p in plans}) == len(plans)
    assert all(a != b for i, a in enumerate(plans) for b in plans[i + 1:])


def test_key_is_the_documented_hash_of_the_canonical_json():
    plan = Plan.from_dict({"version": 1, "layers": {3: "skip_block", 10: {"op": "skip_attn", "scope": "generated"}}})
    # sorted keys (layer indices as numbers), no spaces: the canonical JSON of to_dict()
    canonical = '{"layers":{"3":"skip_block","10":{"op":"skip_attn","scope":"generated"}},"scope":"all","version":1}'
    assert plan.key() == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert len(plan.key()) == 16 and int(plan.key(), 16) >= 0


def test_key_is_stable_across_processes(repo_root):
    data = {"version": 1, "scope": "generated", "layers": {3: "skip_block", 9: "parallel_blocks"},
            "drop": {"start": 20, "end": 24}, "prune": {"method": "wanda", "sparsity": {1: 0.3}}}
    code = "import sys; from searchskip.plan import Plan; print(Plan.from_json(sys.argv[1]).key())"
    keys = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(repo_root))
        result = subprocess.run([sys.executable, "-c", code, json.dumps(data)], env=env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        keys.add(result.stdout.strip())
    assert keys == {Plan.from_dict(data).key()}


def test_plans_are_frozen_and_hashable():
    plan = Plan.from_dict({"version": 1, "layers": {3: "skip_block"},
                           "prune": {"method": "wanda", "sparsity": {2: 0.5}}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.scope = "prompt"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.layers[0][1].op = "skip_ffn"  # type: ignore[misc]
    assert {plan: 1}[Plan.from_dict(plan.to_dict())] == 1
    assert pickle.loads(pickle.dumps(plan)) == plan and pickle.loads(pickle.dumps(plan)).op_for(3).op == "skip_block"
    assert isinstance(plan.layers, tuple) and isinstance(plan.prune.sparsity, tuple)


def test_yaml_output_is_the_human_form():
    plan = Plan.from_dict({"version": 1, "layers": {3: "skip_block", 7: {"op": "skip_attn", "scope": "generated"},
                                                    12: {"op": "parallel_blocks", "average": True}},
                           "drop": {"start": 20, "end": 24},
                           "prune": {"method": "wanda", "structure": "2:4", "sparsity": 0.5}})
    assert plan.to_yaml() == (
        "version: 1\n"
        "scope: all\n"
        "layers:\n"
        "  3: skip_block\n"
        "  7: {op: skip_attn, scope: generated}\n"
        "  12: {op: parallel_blocks, average: true}\n"
        "drop: {start: 20, end: 24}\n"
        "prune:\n"
        "  method: wanda\n"
        "  structure: '2:4'\n"
        "  sparsity: 0.5\n"
        "  targets: [attn, ffn]\n"
        "  calibration: {samples: 128, seed: 0}\n"
    )


# --------------------------------------------------------------------------------------
# Randomised round trips
# --------------------------------------------------------------------------------------


def random_plan_data(rng: random.Random) -> tuple[dict[str, Any], int]:
    """A valid plan in a random spelling, and a layer count it fits."""
    n = rng.randint(2, 40)
    data: dict[str, Any] = {"version": 1}
    if rng.random() < 0.7:
        data["scope"] = rng.choice(SCOPES)
    occupied: set[int] = set()
    if rng.random() < 0.3:
        start = rng.randrange(0, n - 1)
        end = rng.randint(start + 1, min(n - 1, start + 4)) if start + 1 <= n - 1 else start + 1
        data["drop"] = {"start": start, "end": end}
        occupied |= set(range(start, end))
    layers: dict[int, Any] = {}
    for i in sorted(rng.sample(range(n), k=rng.randint(0, min(n, 10)))):
        if i in occupied:
            continue
        op = rng.choice(OPS)
        if op == PARALLEL_BLOCKS:
            if i + 1 >= n or i + 1 in occupied:
                continue
            occupied.add(i + 1)
        occupied.add(i)
        options: dict[str, Any] = {}
        if rng.random() < 0.5:
            options["scope"] = rng.choice(SCOPES)
        if op == PARALLEL_BLOCKS and rng.random() < 0.5:
            options["average"] = rng.random() < 0.5
        layers[i] = {"op": op, **options} if options or rng.random() < 0.3 else op
    if layers or rng.random() < 0.5:
        items = list(layers.items())
        rng.shuffle(items)
        data["layers"] = dict(items)
    if rng.random() < 0.5:
        method = rng.choice(["magnitude", "wanda"])
        structure = rng.choice(["unstructured", "2:4", "ffn_channels"])
        kept = [i for i in range(n) if i not in set(range(data["drop"]["start"], data["drop"]["end"]))] \
            if "drop" in data else list(range(n))

        def ratio() -> float:
            return 0.5 if structure == "2:4" else rng.choice([0.0, 0.1, 0.3, round(rng.random() * 0.99, 4)])

        if rng.random() < 0.5:
            sparsity: Any = ratio()
        else:
            sparsity = {i: ratio() for i in rng.sample(kept, k=rng.randint(1, min(len(kept), 5)))}
        prune: dict[str, Any] = {"method": method, "structure": structure, "sparsity": sparsity}
        if structure == "ffn_channels":
            prune["targets"] = ["ffn"]
        elif rng.random() < 0.6:
            targets = rng.sample(list(PRUNE_TARGETS), k=rng.randint(1, 2))
            prune["targets"] = targets
        if method == "wanda" and rng.random() < 0.5:
            prune["calibration"] = {"samples": rng.randint(1, 512)}
            if rng.random() < 0.5:
                prune["calibration"]["seed"] = rng.randint(0, 9)
        data["prune"] = prune
    return data, n


def respelled(plan: Plan, rng: random.Random) -> dict[str, Any]:
    """The same behaviour written differently: explicit scopes, another default, keep entries, shuffled order."""
    data = plan.to_dict()
    default = rng.choice(SCOPES)
    data["scope"] = default
    layers: dict[int, Any] = {}
    for i, _ in plan.layers:
        op = plan.op_for(i)
        entry: dict[str, Any] = {"op": op.op}
        if op.scope != default or rng.random() < 0.5:
            entry["scope"] = op.scope
        if op.op == PARALLEL_BLOCKS:
            entry["average"] = op.average
        layers[i] = entry
    free = [i for i in range(60) if i not in dict(plan.layers) and i - 1 not in dict(plan.layers)]
    for i in rng.sample(free, k=2):
        layers[i] = rng.choice([KEEP, {"op": KEEP}, {"op": KEEP, "scope": rng.choice(SCOPES)}])
    items = list(layers.items())
    rng.shuffle(items)
    data["layers"] = dict(items)
    if "prune" in data:
        data["prune"]["targets"] = list(reversed(data["prune"]["targets"]))
        if isinstance(data["prune"]["sparsity"], dict):
            data["prune"]["sparsity"][59] = 0.0
    return data


def test_every_op_scope_and_drop_round_trip_yaml():
    """Every (op, scope, average) a planned layer can hold, and a drop, as the ops conformance suite
    applies them, come back equal from their YAML."""
    plans = [Plan(drop=DropSpec(0, 1))]
    for op in OPS:
        for scope in SCOPES:
            for average in ((False, True) if op == PARALLEL_BLOCKS else (False,)):
                plans.append(Plan(layers={0: LayerOp(op, scope, average)}))
    for plan in plans:
        assert Plan.from_yaml_text(plan.to_yaml()) == plan, plan.to_yaml()


def test_random_plans_round_trip_and_respellings_are_equal():
    rng = random.Random(20241012)
    kinds = set()
    for _ in range(300):
        data, n = random_plan_data(rng)
        plan = Plan.from_dict(data)
        plan.validate(n)
        kinds.update(op.op for _, op in plan.layers)
        assert Plan.from_dict(plan.to_dict()) == plan, data
        assert Plan.from_yaml_text(plan.to_yaml()) == plan, data
        assert Plan.from_json(plan.to_json()) == plan, data
        assert Plan.from_dict(plan.to_dict()).to_dict() == plan.to_dict()
        assert Plan(layers=plan.layers, scope=plan.scope, drop=plan.drop, prune=plan.prune) == plan
        other = Plan.from_dict(respelled(plan, rng))
        assert other == plan and other.key() == plan.key(), (data, other)
    assert kinds == set(OPS) - {KEEP}


# --------------------------------------------------------------------------------------
# Helpers for later code
# --------------------------------------------------------------------------------------


def test_op_for_fills_in_the_scope_and_keeps_absent_layers():
    plan = Plan.from_dict({"version": 1, "scope": "generated",
                           "layers": {3: "skip_block", 7: {"op": "skip_attn", "scope": "prompt"}}})
    assert plan.op_for(3) == LayerOp("skip_block", "generated")
    assert plan.op_for(7) == LayerOp("skip_attn", "prompt")
    assert plan.op_for(4) == LayerOp(KEEP, "generated")
    assert plan.op_for(1000).op == KEEP
    with pytest.raises(ValueError):
        plan.op_for(-1)


def test_is_empty_dropped_layers_and_describe():
    assert Plan().is_empty and Plan().describe() == [] and Plan().dropped_layers() == set()
    plan = Plan.from_dict({"version": 1, "layers": {3: "skip_block", 7: {"op": "skip_attn", "scope": "generated"},
                                                    12: {"op": "parallel_blocks", "average": True}},
                           "drop": {"start": 20, "end": 24},
                           "prune": {"method": "wanda", "sparsity": 0.3}})
    assert not plan.is_empty
    assert plan.dropped_layers() == {20, 21, 22, 23}
    assert plan.describe() == ["3: skip_block", "7: skip_attn [generated]", "12+13: parallel_blocks (average)",
                               "20-23: dropped", "prune: wanda unstructured 30% of attn+ffn"]
    assert Plan.from_dict({"version": 1, "drop": {"start": 2, "end": 3}}).describe() == ["2: dropped"]
    assert not Plan.from_dict({"version": 1, "drop": {"start": 2, "end": 3}}).is_empty


# --------------------------------------------------------------------------------------
# The paper's interval pattern
# --------------------------------------------------------------------------------------


def test_from_pattern_on_the_papers_settings():
    # layers i with 4 < i < 32 and i % 2 == 0
    plan = Plan.from_pattern(2, 4, 32, "skip_block", num_layers=32)
    assert [i for i, _ in plan.layers] == [6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]
    assert {op for _, op in plan.layers} == {LayerOp("skip_block")} and plan.scope == "all"
    assert Plan.from_pattern(2, 4, 32, "skip_block") == plan
    assert [i for i, _ in Plan.from_pattern(4, 0, 16, "skip_ffn").layers] == [4, 8, 12]
    assert [i for i, _ in Plan.from_pattern(3, -1, 10, "skip_attn").layers] == [0, 3, 6, 9]
    generated = Plan.from_pattern(2, 4, 32, "skip_attn", scope="generated", num_layers=32)
    assert generated.scope == "generated" and all(generated.op_for(i).scope == "generated" for i, _ in generated.layers)


def test_from_pattern_clamps_to_the_model_and_checks_it():
    plan = Plan.from_pattern(2, 4, 40, "skip_block", num_layers=32)
    assert [i for i, _ in plan.layers][-1] == 30
    assert [i for i, _ in Plan.from_pattern(2, 4, 40, "skip_block").layers][-1] == 38


def test_from_pattern_parallel_blocks_skips_taken_partners():
    plan = Plan.from_pattern(1, 4, 12, "parallel_blocks", num_layers=12)
    assert [i for i, _ in plan.layers] == [5, 7, 9]  # 6, 8, 10 are partners; 11 has no partner
    assert [i for i, _ in Plan.from_pattern(1, 4, 12, "parallel_blocks").layers] == [5, 7, 9, 11]
    averaged = Plan.from_pattern(2, 0, 8, "parallel_blocks", average=True, num_layers=8)
    assert [i for i, _ in averaged.layers] == [2, 4, 6] and all(op.average for _, op in averaged.layers)


def test_from_pattern_refuses_bad_arguments():
    with pytest.raises(ConfigError) as info:
        Plan.from_pattern(0, 5, 3, "skip", scope="gen")
    by_key = {p.key: p.rule for p in info.value.problems}
    assert by_key["skip_interval"] == "`skip_interval >= 1` must hold, but got skip_interval=0"
    assert by_key["end_layer"] == "`start_layer < end_layer` must hold, but got start_layer=5, end_layer=3"
    assert "must be one of 'skip_block'" in by_key["mode"] and "'keep'" not in by_key["mode"]
    assert "did you mean 'generated'?" in by_key["scope"]
    with pytest.raises(ConfigError, match="average: applies only to mode 'parallel_blocks'"):
        Plan.from_pattern(2, 4, 8, "skip_block", average=True)


# --------------------------------------------------------------------------------------
# Structural errors at parse time
# --------------------------------------------------------------------------------------

INVALID_PLANS = {
    "unknown op": ("version: 1\nlayers:\n  3: skip_blok\n", "layers.3", "did you mean 'skip_block'?"),
    "unknown op, long form": ("version: 1\nlayers:\n  3: {op: skip_atn}\n", "layers.3.op",
                              "but got string 'skip_atn'; did you mean 'skip_attn'?"),
    "unknown layer scope": ("version: 1\nlayers:\n  7: {op: skip_attn, scope: generatd}\n", "layers.7.scope",
                            "did you mean 'generated'?"),
    "unknown plan scope": ("version: 1\nscope: visuals\n", "scope",
                           "must be one of 'all', 'generated', 'prompt', 'non_visual', 'visual', but got string "
                           "'visuals'; did you mean 'visual'?"),
    "unknown top-level key": ("version: 1\nlayer:\n  3: skip_block\n", "layer", "did you mean 'layers'?"),
    "unknown op option": ("version: 1\nlayers:\n  7: {op: skip_attn, avg: true}\n", "layers.7.avg",
                          "did you mean 'average'?"),
    "op of the wrong type": ("version: 1\nlayers:\n  3: 5\n", "layers.3", "but got integer 5"),
    "string layer key": ("version: 1\nlayers:\n  '3': skip_block\n", "layers",
                         "keys must be integers, but layers has the key string '3' (remove the quotes"),
    "boolean layer key": ("version: 1\nlayers:\n  yes: skip_block\n", "layers", "keys must be integers"),
    "negative layer": ("version: 1\nlayers:\n  -1: skip_block\n", "layers.-1",
                       "`layer >= 0` must hold (decoder layers are numbered from 0), but got layer=-1"),
    "duplicate layer": ("version: 1\nlayers:\n  3: skip_block\n  3: skip_ffn\n", "layers.3", "duplicate key"),
    "wrong version": ("version: 2\n", "version", "`version == 1` must hold (this searchskip reads plan version 1), "
                                                 "but got version=2"),
    "missing version": ("layers:\n  3: skip_block\n", "version", "is required but missing"),
    "drop start >= end": ("version: 1\ndrop: {start: 5, end: 3}\n", "drop.end",
                          "`start < end` must hold (drop removes layers start..end-1, like range(start, end)), "
                          "but got start=5, end=3"),
    "drop negative start": ("version: 1\ndrop: {start: -2, end: 3}\n", "drop.start",
                            "`start >= 0` must hold (decoder layers are numbered from 0), but got start=-2"),
    "drop as text": ("version: 1\ndrop: {start: '2', end: 4}\n", "drop.start", "must be an integer"),
    "sparsity 1": ("version: 1\nprune: {method: wanda, sparsity: 1.0}\n", "prune.sparsity",
                   "`0 <= sparsity < 1` must hold, but got sparsity=1.0"),
    "negative layer sparsity": ("version: 1\nprune: {method: wanda, sparsity: {3: -0.1}}\n", "prune.sparsity.3",
                                "`0 <= sparsity < 1` must hold, but got sparsity=-0.1 for layer 3"),
    "2:4 not half": ("version: 1\nprune: {method: magnitude, structure: '2:4', sparsity: 0.3}\n", "prune.sparsity",
                     "structure '2:4' keeps 2 of every 4 weights, so `sparsity == 0.5` must hold, "
                     "but got sparsity=0.3"),
    "unquoted 2:4": ("version: 1\nprune: {method: magnitude, structure: 2:4, sparsity: 0.5}\n", "prune.structure",
                     "YAML reads an unquoted 2:4 as the base-60 number 124: quote it"),
    "calibration samples 0": ("version: 1\nprune: {method: wanda, sparsity: 0.3, calibration: {samples: 0}}\n",
                              "prune.calibration.samples", "`samples >= 1` must hold, but got samples=0"),
    "empty targets": ("version: 1\nprune: {method: wanda, sparsity: 0.3, targets: []}\n", "prune.targets",
                      "must name at least one of 'attn', 'ffn', but got an empty list"),
    "unknown target": ("version: 1\nprune: {method: wanda, sparsity: 0.3, targets: [attn, mlp]}\n", "prune.targets[1]",
                       "must be one of 'attn', 'ffn', but got string 'mlp'"),
    "repeated target": ("version: 1\nprune: {method: wanda, sparsity: 0.3, targets: [ffn, ffn]}\n", "prune.targets",
                        "must name each target once, but 'ffn' appears 2 times"),
    "ffn_channels on attention": ("version: 1\nprune: {method: wanda, structure: ffn_channels, sparsity: 0.3}\n",
                                  "prune.targets", "`targets` must be [ffn], but got [attn, ffn]"),
    "calibration for magnitude": ("version: 1\nprune: {method: magnitude, sparsity: 0.3, calibration: {samples: 8}}\n",
                                  "prune.calibration", "applies only to method 'wanda'"),
    "unknown method": ("version: 1\nprune: {method: wand, sparsity: 0.3}\n", "prune.method", "did you mean 'wanda'?"),
    "missing sparsity": ("version: 1\nprune: {method: wanda}\n", "prune.sparsity", "is required but missing"),
    "bad sparsity entry": ("version: 1\nprune: {method: wanda, sparsity: {3: high}}\n", "prune.sparsity.3",
                           "must be a number, but got string 'high'"),
    "average off parallel_blocks": ("version: 1\nlayers:\n  3: {op: skip_block, average: true}\n", "layers.3.average",
                                    "applies only to op 'parallel_blocks'"),
    "parallel partner has an op": ("version: 1\nlayers:\n  4: parallel_blocks\n  5: skip_ffn\n", "layers.4",
                                   "so layer 5 must have no op of its own, but layer 5 has op 'skip_ffn'"),
    "overlapping parallel pairs": ("version: 1\nlayers:\n  4: parallel_blocks\n  5: parallel_blocks\n", "layers.4",
                                   "layer 5 is itself the start of another parallel_blocks pair"),
    "op on a dropped layer": ("version: 1\nlayers:\n  5: skip_block\ndrop: {start: 4, end: 6}\n", "layers.5",
                              "layer 5 is removed by `drop` (layers 4..5), so it cannot also have op 'skip_block'"),
    "parallel partner dropped": ("version: 1\nlayers:\n  3: parallel_blocks\ndrop: {start: 4, end: 5}\n", "layers.3",
                                 "but layer 4 is removed by `drop` (layer 4)"),
    "pruning a dropped layer": ("version: 1\ndrop: {start: 4, end: 6}\nprune: {method: wanda, sparsity: {5: 0.3}}\n",
                                "prune.sparsity.5",
                                "layer 5 is removed by `drop` (layers 4..5), so it cannot be pruned"),
    "not a mapping": ("version: 1\nlayers: [skip_block]\n", "layers", "must be a mapping, but got a list of 1 item"),
}


@pytest.mark.parametrize("text,key,rule", INVALID_PLANS.values(), ids=INVALID_PLANS.keys())
def test_invalid_plans_name_file_key_and_rule(text, key, rule):
    problems = problems_of(text)
    assert all(p.file == "bad.yaml" for p in problems)
    assert any(rule in r for r in rules_at(problems, key)), "\n".join(map(str, problems))


def test_all_structural_problems_are_reported_together():
    text = ("version: 3\nscope: everything\nlayers:\n  2: skip_blok\n  7: {op: skip_attn, scope: gen}\n"
            "drop: {start: 6, end: 6}\nprune: {method: wanda, structure: '2:4', sparsity: 0.3, targets: []}\n"
            "extra: 1\n")
    problems = problems_of(text)
    assert {p.key for p in problems} == {"version", "scope", "layers.2", "layers.7.scope", "drop.end",
                                         "prune.sparsity", "prune.targets", "extra"}, "\n".join(map(str, problems))
    with pytest.raises(ConfigError) as info:
        Plan.from_yaml_text(text, "bad.yaml")
    assert str(info.value).startswith("8 problems:")


def test_constructor_checks_like_a_file():
    with pytest.raises(ConfigError) as info:
        Plan(layers={3: "nope", 4: LayerOp("skip_block", average=True)}, drop=DropSpec(5, 3))
    assert {p.key for p in info.value.problems} == {"layers.3", "layers.4.average", "drop.end"}
    assert all(p.file is None for p in info.value.problems)
    with pytest.raises(ConfigError, match="layers.3: layer 3 is given more than once"):
        Plan(layers=[(3, "skip_block"), (3, "skip_ffn")])
    with pytest.raises(ConfigError, match="prune.calibration: applies only to method 'wanda'"):
        Plan(prune=PruneSpec(method="magnitude", sparsity=0.3, calibration=CalibrationSpec()))
    with pytest.raises(ConfigError, match=r"op: must be one of .*did you mean 'skip_attn'\?"):
        LayerOp("skip_atn")
    with pytest.raises(TypeError):
        Plan(layers=[3])


def test_text_and_json_errors_are_config_errors_naming_the_source(tmp_path):
    with pytest.raises(ConfigError) as info:
        Plan.from_yaml_text("layers: [\n", "mine.yaml")
    assert info.value.problems[0].file == "mine.yaml" and "invalid YAML" in info.value.problems[0].rule
    with pytest.raises(ConfigError, match="j.json: is not valid JSON"):
        Plan.from_json("{", "j.json")
    with pytest.raises(ConfigError, match="appears twice"):
        Plan.from_json('{"version": 1, "version": 1}')
    with pytest.raises(ConfigError, match="layers: keys must be integers"):
        Plan.from_json('{"version": 1, "layers": {"03": "skip_block"}}')
    with pytest.raises(ConfigError, match="file does not exist"):
        Plan.load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must be a mapping of settings"):
        Plan.from_dict(["version", 1])


# --------------------------------------------------------------------------------------
# Model-dependent checks
# --------------------------------------------------------------------------------------


def test_validate_against_the_model_collects_every_problem():
    plan = Plan.from_dict({"version": 1, "layers": {7: "parallel_blocks", 9: "skip_block"},
                           "prune": {"method": "magnitude", "sparsity": {4: 0.3, 15: 0.2}}})
    with pytest.raises(ConfigError) as info:
        plan.validate(8, file="p.yaml")
    by_key = {p.key: p.rule for p in info.value.problems}
    assert set(by_key) == {"layers.7", "layers.9", "prune.sparsity.15"}
    assert all(p.file == "p.yaml" for p in info.value.problems)
    assert by_key["layers.9"] == ("`layer < num_layers` must hold (the model has 8 decoder layers, 0..7), "
                                  "but got layer=9")
    assert "parallel_blocks pairs layer 7 with layer 8, but layer 7 is the last one" in by_key["layers.7"]
    assert "got layer=15" in by_key["prune.sparsity.15"]
    plan.validate(16)


def test_validate_checks_drop_against_the_model():
    with pytest.raises(ConfigError, match=r"drop.end: `end <= num_layers` must hold \(the model has 8 decoder"):
        Plan.from_dict({"version": 1, "drop": {"start": 6, "end": 9}}).validate(8)
    with pytest.raises(ConfigError, match="drop: must leave at least one layer"):
        Plan.from_dict({"version": 1, "drop": {"start": 0, "end": 8}}).validate(8)
    Plan.from_dict({"version": 1, "drop": {"start": 0, "end": 7}}).validate(8)
    with pytest.raises(ValueError):
        Plan().validate(0)


# --------------------------------------------------------------------------------------
# `searchskip validate`
# --------------------------------------------------------------------------------------


def test_plans_are_detected_by_folder_and_by_keys(tmp_path):
    assert validate.detect_kind(tmp_path / "plans" / "x.yaml", {"name": "t"}) == "plan"
    assert validate.detect_kind(tmp_path / "x.yaml", {"version": 1, "layers": {}}) == "plan"
    assert validate.detect_kind(tmp_path / "x.yaml", {"version": 1, "drop": {}}) == "plan"
    assert validate.detect_kind(tmp_path / "x.yaml", {"name": "t", "model": {}}) == "job"


def test_validate_command_reports_a_bad_plan_outside_plans_folder(write_yaml, capsys):
    path = write_yaml("version: 1\nlayers:\n  3: skip_blok\n", name="loose.yaml")
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: layers.3: must be one of" in err and "did you mean 'skip_block'?" in err


def test_python_m_searchskip_validate_bad_plan_exits_2_without_traceback(write_yaml, tmp_path, repo_root):
    bad = write_yaml("version: 1\nlayers:\n  3: {op: skip_attn, scope: generatd}\n  5: parallel_blocks\n"
                     "  6: skip_ffn\nprune: {method: wanda, sparsity: 1.5}\n", name="plans/bad.yaml")
    good = plans_dir(repo_root) / "scoped.yaml"
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    env.pop("FORCE_COLOR", None)
    result = subprocess.run([sys.executable, "-m", "searchskip", "validate", str(bad), str(good)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"OK {good}" in result.stdout
    for expected in (f"{bad}: layers.3.scope: must be one of", f"{bad}: layers.5: parallel_blocks at layer 5",
                     f"{bad}: prune.sparsity: `0 <= sparsity < 1` must hold, but got sparsity=1.5",
                     "1 of 2 files failed validation"):
        assert expected in result.stderr, result.stderr


# --------------------------------------------------------------------------------------
# The loader extensions plans rely on (integer keys, unions reported in detail)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Keyed:
    table: Mapping[int, float] = dataclasses.field(default_factory=dict)
    either: float | Mapping[int, float] = 0.0


def test_build_reads_integer_keyed_mappings_and_reports_union_details():
    obj, problems = build(_Keyed, {"table": {1: 0.5, 2: 1}, "either": {3: 0.25}}, "f.yaml")
    assert problems == [] and obj == _Keyed(table={1: 0.5, 2: 1.0}, either={3: 0.25})
    obj, problems = build(_Keyed, {"table": {"1": 0.5, True: 0.1}, "either": {3: "x"}}, "f.yaml")
    assert obj is None
    assert [(p.key, p.rule.split(",")[0]) for p in problems] == [
        ("table", "keys must be integers"), ("table", "keys must be integers"), ("either.3", "must be a number")]


def test_plans_built_in_code_are_checked_every_time_though_the_check_is_remembered():
    """Plan() remembers the check of plain data (a search builds the same plans again and again):
    a bad plan is refused every time, equal plans stay equal, and data that is not plain (NaN,
    which repr cannot write back) is checked without the memo."""
    for _ in range(3):
        with pytest.raises(ConfigError, match="did you mean 'skip_block'"):
            Plan(layers={3: "skip_blok"})
    assert Plan(layers={3: "skip_block"}) == Plan(layers={3: "skip_block"}) == Plan(layers={3: LayerOp("skip_block")})
    with pytest.raises(ConfigError, match="sparsity"):
        Plan(prune=PruneSpec(method="magnitude", sparsity=float("nan")))
