"""The prepared validation subset: tokenized once, image features computed once, same answers."""

from __future__ import annotations

import pytest

from searchskip.config.loader import load_job
from searchskip.eval.generate import answer_all
from searchskip.eval.prepared import encodes_images_once, prepare_subset
from searchskip.plan import Plan
from searchskip.search.objective import ModelEvaluator
from tests.helpers import REPO

PLANS = [
    Plan(),
    Plan.from_dict({"version": 1, "layers": {2: "skip_block", 4: "skip_attn"}}),
    Plan.from_dict({"version": 1, "scope": "non_visual", "layers": {3: "skip_ffn", 5: "skip_block"}}),
    Plan.from_dict({"version": 1, "visual_tokens": {"after_layer": 2, "keep": 0.5, "rank": "attention"}}),
]


@pytest.fixture(scope="module")
def demo(one_thread):
    """The embedded model and 40 validation questions (batches of 16: 16, 16, 8)."""
    from searchskip.data.splits import load_eval_split
    from searchskip.models import load_model

    job = load_job(REPO / "jobs/demo.yaml")
    return load_model(job.model), load_eval_split(job.data, "validation").select(range(40))


def _vision_calls(model):
    calls = []
    handle = model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("cache", ["memory", "disk", "none"])
def test_prepared_answers_equal_plain_generation_under_plans(demo, cache, tmp_path):
    from searchskip.apply import apply

    loaded, dataset = demo
    calls, hook = _vision_calls(loaded.model)
    try:
        evaluator = ModelEvaluator(loaded, dataset, 16, 2, feature_cache=cache, cache_folder=tmp_path)
        assert evaluator.prepared.cache == cache and len(evaluator.prepared) == 3
        built = len(calls)
        assert built == (0 if cache == "none" else 3)  # features computed once, at preparation
        for plan in PLANS:
            handle = apply(loaded.model, plan)
            try:
                want = answer_all(loaded, dataset, 16, 2)
                got = [a for batch in evaluator.prepared for a in _answers(loaded, batch)]
            finally:
                handle.restore()
            assert got == want, plan.to_yaml()
        calls.clear()
        evaluator(PLANS[1], None)
        assert len(calls) == (3 if cache == "none" else 0)  # a trial runs no vision tower with a cache
    finally:
        hook.remove()
    folder = evaluator.prepared.folder
    if cache == "disk":
        assert folder is not None and folder.parent == tmp_path and len(list(folder.iterdir())) == 3
    evaluator.close()
    if folder is not None:
        assert not folder.exists()


def _answers(loaded, batch):
    from searchskip.eval.generate import generate_answers

    return generate_answers(loaded, batch.generate_inputs(), 2)


def test_auto_cache_falls_back_to_disk_past_the_memory_limit(demo, tmp_path):
    loaded, dataset = demo
    small = prepare_subset(loaded, dataset, 16, feature_cache="auto", memory_limit_gb=0.0, folder=tmp_path)
    large = prepare_subset(loaded, dataset, 16, feature_cache="auto", memory_limit_gb=1.0)
    try:
        assert small.cache == "disk" and large.cache == "memory"
        # 40 images x 16 tokens x the decoder width, float32
        width = loaded.model.config.text_config.hidden_size
        assert small.feature_bytes == large.feature_bytes == 40 * 16 * width * 4
    finally:
        small.close()
        large.close()


def test_text_only_models_get_batches_without_features():
    from searchskip.testing import tiny_model

    assert encodes_images_once(tiny_model("llava-llama"))
    assert not encodes_images_once(tiny_model("llama"))


def test_a_bad_feature_cache_is_refused(demo):
    loaded, dataset = demo
    with pytest.raises(ValueError, match="feature_cache must be one of auto, memory, disk, none"):
        prepare_subset(loaded, dataset, 16, feature_cache="ram")
