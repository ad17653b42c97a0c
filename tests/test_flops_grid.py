"""FLOPs of models that take images at their own resolution (Qwen2-VL, Qwen2.5-VL).

An image is a patch grid (t, h, w); its LLM positions, the tower's windows and the merger's
work all follow it. Counted here against FlopCounterMode on the tower alone (grids whose
windows are cut at the edges, non-square), on whole generations with images of different
sizes, and as a workload of several image sizes (variants): the mean of exact counts, and a
budget that must hold for every variant.
"""

from __future__ import annotations

import pytest
import torch

from searchskip.errors import ConfigError
from searchskip.flops import Budget, Workload, count_flops, geometry_of
from searchskip.flops.measure import measure_flops
from searchskip.flops.vision import GridVisionGeometry
from searchskip.plan import LayerOp, Plan, VisualTokensSpec
from searchskip.testing import ANYRES_FAMILIES, QWEN_PATCH, QWEN_VL_FAMILIES, tiny_inputs, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT, BEFORE, GENERATED = 12, 2, 3


def _workload(side: int, generated: int = GENERATED) -> Workload:
    # tiny_inputs(batch=1, seq=TEXT): 2 text tokens, <vision_start>, the image, <vision_end>, the rest
    return Workload(prompt_tokens=TEXT + 2, generated_tokens=generated, text_before_image=BEFORE + 1,
                    image_shape=(1, side // QWEN_PATCH, side // QWEN_PATCH))


@pytest.mark.parametrize("grid", [(1, 8, 8), (1, 6, 10), (1, 2, 14), (2, 4, 6)])
@pytest.mark.parametrize("family", QWEN_VL_FAMILIES)
def test_vision_tower_matches_flop_counter(family, grid):
    """Windows of 2 x 2 merged units (Qwen2.5-VL), cut short at the right and bottom edges."""
    model = tiny_model(family)
    vision = geometry_of(model.config).vision
    assert isinstance(vision, GridVisionGeometry)
    vc = model.config.vision_config
    t, h, w = grid
    pixels = torch.randn(t * h * w, vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2)
    measured, out = measure_flops(lambda: model.model.visual(pixels, grid_thw=torch.tensor([grid])))
    assert out.pooler_output.shape[0] == vision.tokens_per_image(grid) == t * h * w // 4
    tower = sum(f for _, _, f in vision.entries(1, grid))
    projector = sum(lin.flops_per_token for lin in vision.projector) * vision.tokens_per_image(grid)
    assert tower + projector == measured


@pytest.mark.parametrize("family", QWEN_VL_FAMILIES)
@pytest.mark.parametrize("side", [16, 24, 40])
def test_generation_at_each_image_size_matches_flop_counter(family, side):
    model = tiny_model(family)
    inputs = tiny_inputs(model, batch=1, seq=TEXT, image_sides=[side])
    measured, _ = measure_flops(lambda: model.generate(**inputs, max_new_tokens=GENERATED,
                                                       min_new_tokens=GENERATED, do_sample=False))
    report = count_flops(model.config, None, _workload(side))
    assert report.total(attention="kernel") == measured
    assert report.workload.image_tokens == (side // QWEN_PATCH) ** 2 // 4


def test_a_workload_of_several_image_sizes_is_the_mean_of_exact_counts():
    model = tiny_model("qwen2.5-vl")
    small, large = _workload(16), _workload(40)
    mix = Workload(prompt_tokens=TEXT + 2, generated_tokens=GENERATED, text_before_image=BEFORE + 1,
                   variants=((0.75, small), (0.25, large)))
    plan = Plan(layers={1: LayerOp("skip_block", "visual"), 2: "skip_ffn"}, visual_tokens=VisualTokensSpec(3, 0.5))
    for p in (None, plan):
        got = count_flops(model.config, p, mix)
        want = 0.75 * count_flops(model.config, p, small).total() + 0.25 * count_flops(model.config, p, large).total()
        assert got.total() == pytest.approx(want, rel=1e-12)
        assert [r.workload.image_tokens for _, r in got.variants] == [4, 25]
    # measured on a real generation of each sample, the mean is the mean
    measured = [measure_flops(lambda s=s: model.generate(**tiny_inputs(model, batch=1, seq=TEXT, image_sides=[s]),
                                                         max_new_tokens=GENERATED, min_new_tokens=GENERATED,
                                                         do_sample=False))[0] for s in (16, 40)]
    kernel = count_flops(model.config, None, mix, attention="kernel").total()
    assert kernel == pytest.approx(0.75 * measured[0] + 0.25 * measured[1], rel=1e-12)
    assert mix.image_token_range() is None  # not resolved yet: the tower gives the counts
    resolved = count_flops(model.config, None, mix).workload
    assert resolved.image_token_range() == (4, 25)
    assert "4-25 tokens" in resolved.describe()
    assert Workload.from_dict(resolved.to_dict()) == resolved


def test_the_budget_holds_for_every_image_size_not_only_the_mean():
    """Dropping a fixed number of image tokens saves a larger share on the large image: a plan
    can fit the mean ratio and still exceed it on the small images."""
    model = tiny_model("qwen2.5-vl")
    mix = Workload(prompt_tokens=TEXT + 2, generated_tokens=GENERATED, text_before_image=BEFORE + 1,
                   variants=((0.5, _workload(16)), (0.5, _workload(64))))
    base = count_flops(model.config, None, mix)
    plan = Plan(visual_tokens=VisualTokensSpec(1, 0.25))
    report = count_flops(model.config, plan, mix)
    ratios = [r.ratio(b) for (_, r), (_, b) in zip(report.variants, base.variants)]
    mean = report.ratio(base)
    assert min(ratios) < mean < max(ratios)
    between = Budget(ratio=(mean + max(ratios)) / 2)
    assert between.cost(report) <= between.limit(base)  # the mean fits ...
    assert not between.allows(report, base)  # ... one image size does not
    assert Budget(ratio=max(ratios) * 1.001).allows(report, base)
    assert report.to_dict(base)["variants"][1]["ratio"] == pytest.approx(min(ratios))


def test_grid_towers_need_an_image_grid():
    model = tiny_model("qwen2-vl")
    with pytest.raises(ConfigError, match="image_shape.*own resolution"):
        count_flops(model.config, None, Workload(prompt_tokens=10))
    with pytest.raises(ConfigError, match="image_shape"):
        count_flops(model.config, None, Workload(prompt_tokens=10, image_shape=(1, 3, 4)))
    with pytest.raises(ConfigError, match="16 LLM positions per image"):
        count_flops(model.config, None, Workload(prompt_tokens=10, image_shape=(1, 8, 8), image_tokens=9))
    with pytest.raises(ConfigError, match="image_shape"):
        Workload(prompt_tokens=10, image_shape=(1, 0, 4))
    with pytest.raises(ConfigError, match="sum to 1"):
        Workload(prompt_tokens=10, variants=((0.5, _workload(16)),))


def test_grid_for_follows_the_processor_resize():
    vision = geometry_of(tiny_model("qwen2-vl").config).vision
    # sides rounded to multiples of patch * merge = 8 pixels, within the processor's pixel range
    assert vision.shape_for(96, 64) == (1, 24, 16)
    assert vision.tokens_per_image(vision.shape_for(96, 64)) == 96
    # below min_pixels (56 * 56) the image is scaled up, keeping its aspect
    assert vision.shape_for(30, 50) == (1, 12, 20)


def test_qwen2_5_vl_7b_shipped_config_is_counted_as_by_hand():
    """Qwen2.5-VL-7B-Instruct (config shipped in the package) on a 480 x 640 image: resized to
    476 x 644, a 34 x 46 patch grid, 391 LLM positions; the ViT by hand."""
    from searchskip.flops import known_config

    config = known_config("Qwen/Qwen2.5-VL-7B-Instruct")
    g = geometry_of(config)
    assert (g.family, g.num_layers, round(g.params_total / 1e9, 2)) == ("qwen2.5-vl", 28, 8.29)
    vision = g.vision
    grid = vision.shape_for(480, 640)
    assert grid == (1, 34, 46) and vision.tokens_per_image(grid) == 391
    patches = 34 * 46
    per_patch = 2 * (1280 * 3840 + 1280 * 1280 + 3 * 1280 * 3420)  # qkv, proj, gate/up/down
    units_h, units_w = [4, 4, 4, 4, 1], [4, 4, 4, 4, 4, 3]  # 17 x 23 merged units in windows of 4 x 4
    window_pairs = 16 * sum(r * r for r in units_h) * sum(c * c for c in units_w)
    attention = 4 * 1280 * (4 * patches ** 2 + 28 * window_pairs)  # 4 full blocks, 28 windowed
    embed = 2 * 3 * 2 * 14 * 14 * 1280 * patches
    tower = sum(f for _, _, f in vision.entries(1, grid))
    assert tower == 32 * patches * per_patch + attention + embed
    report = count_flops(config, None, Workload(prompt_tokens=45, generated_tokens=2, image_shape=grid))
    assert report.by_component()["projector"] == 391 * 2 * (5120 * 5120 + 5120 * 3584)
    assert round(report.total() / 1e12, 3) == 7.817


@pytest.mark.parametrize(("name", "ratio"), [("paper-every-2nd", 0.7115), ("paper-every-2nd-generated", 0.9993),
                                             ("image-tokens-frozen", 0.6075)])
def test_qwen2_5_vl_7b_shipped_plans_cost_what_the_readme_says(name, ratio):
    from pathlib import Path

    from searchskip.flops import known_config

    config = known_config("Qwen/Qwen2.5-VL-7B-Instruct")
    plan = Plan.load(Path(__file__).resolve().parents[1] / "spaces/plans/qwen2.5-vl-7b" / f"{name}.yaml")
    plan.validate(28)
    w = Workload(prompt_tokens=45, generated_tokens=2, image_shape=(1, 34, 46))
    assert round(count_flops(config, plan, w).ratio(count_flops(config, None, w)), 4) == ratio


# --------------------------------------------------------------------------------------
# LLaVA-NeXT's anyres: crops of the best-fitting resolution, letterbox padding unpadded
# --------------------------------------------------------------------------------------


ANYRES_TOKENS = {"llava-next": {(32, 32): 36, (64, 64): 88}, "llava-onevision": {(32, 32): 36, (64, 64): 46}}
"""A 64 x 64 image: 2 x 2 tiles of 4 x 4 patches; OneVision (anyres_max_2) shrinks their 8 x 8 to 5 x 5."""


@pytest.mark.parametrize("family", ANYRES_FAMILIES)
@pytest.mark.parametrize("size", [(32, 32), (48, 100), (100, 48), (64, 64), (20, 70)])
def test_anyres_tower_and_tokens_match_the_model(family, size):
    """The tower and projector run on every crop (FlopCounterMode), and the model packs exactly
    ``tokens_per_image`` features (base crop, unpadded tiles, shrunk past ``anyres_max_N``,
    a newline a row)."""
    from searchskip.flops.vision import AnyresVisionGeometry

    model = tiny_model(family)
    vision = geometry_of(model.config).vision
    assert isinstance(vision, AnyresVisionGeometry)
    crops = vision.crops(size)
    vc = model.config.vision_config
    pixels = torch.randn(1, crops, 3, vc.image_size, vc.image_size)
    measured, out = measure_flops(lambda: model.model.get_image_features(pixels, torch.tensor([list(size)]),
                                                                         return_dict=True))
    assert out.pooler_output[0].shape[0] == vision.tokens_per_image(size)
    tower = sum(f for _, _, f in vision.entries(1, size))
    projector = sum(lin.flops_per_token for lin in vision.projector) * vision.projector_tokens(size)
    assert tower + projector == measured
    assert vision.projector_tokens(size) == crops * 16  # every crop's 4 x 4 patches (CLIP: class token dropped)
    if size in ANYRES_TOKENS[family]:
        assert vision.tokens_per_image(size) == ANYRES_TOKENS[family][size]


@pytest.mark.parametrize("family", ANYRES_FAMILIES)
@pytest.mark.parametrize("side", [32, 64])
def test_anyres_generation_matches_flop_counter(family, side):
    model = tiny_model(family)
    inputs = tiny_inputs(model, batch=1, seq=TEXT, image_sides=[side])
    measured, _ = measure_flops(lambda: model.generate(**inputs, max_new_tokens=GENERATED,
                                                       min_new_tokens=GENERATED, do_sample=False))
    w = Workload(prompt_tokens=TEXT, generated_tokens=GENERATED, text_before_image=BEFORE, image_shape=(side, side))
    assert count_flops(model.config, None, w).total(attention="kernel") == measured


def test_llava_next_7b_shipped_config_on_a_480_by_640_image():
    """672 x 672 is the best fit: 5 CLIP-L/336 crops; 576 base tokens + 36 rows x (48 + newline)."""
    from pathlib import Path

    from searchskip.flops import known_config

    config = known_config("llava-hf/llava-v1.6-vicuna-7b-hf")
    vision = geometry_of(config).vision
    shape = vision.shape_for(480, 640)
    assert vision.crops(shape) == 5 and vision.tokens_per_image(shape) == 576 + 36 * 49
    llava = geometry_of(known_config("llava-hf/llava-1.5-7b-hf")).vision
    assert sum(f for _, _, f in vision.entries(1, shape)) == 5 * sum(f for _, _, f in llava.entries(1, None))
    w = Workload(prompt_tokens=40, generated_tokens=2, image_shape=shape)
    base = count_flops(config, None, w)
    assert round(base.total() / 1e12, 3) == 34.356
    frozen = Plan.load(Path(__file__).resolve().parents[1] / "spaces/plans/llava-1.5-7b/image-tokens-frozen.yaml")
    assert round(count_flops(config, frozen, w).ratio(base), 4) == 0.5382


# --------------------------------------------------------------------------------------
# SigLIP: no class token; its attention-pooling head runs (and is counted) where it is on
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy,tokens", [("default", 15), ("full", 16)])
@pytest.mark.parametrize("use_head", [True, False])
def test_a_llava_over_siglip_is_counted_with_its_pooling_head(use_head, strategy, tokens):
    """SigLIP has no class token: ``default`` drops a patch (as LLaVA's code does), ``full`` keeps
    all 16; with ``vision_use_head`` the head's probe attends to every patch."""
    from searchskip.testing import tiny_inputs as inputs_of

    model = tiny_model("llava-llama", vision_config={"model_type": "siglip_vision_model", "vision_use_head": use_head},
                       llava_config={"vision_feature_select_strategy": strategy})
    vision = geometry_of(model.config).vision
    assert (vision.head is not None) == use_head and not vision.class_token
    assert vision.image_tokens == tokens
    pixels = torch.randn(2, 3, 32, 32)
    measured, _ = measure_flops(lambda: model.model.vision_tower(pixels))
    assert sum(f for _, _, f in vision.entries(2)) == measured
    batch = inputs_of(model, batch=1, seq=TEXT)
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == tokens
    measured, _ = measure_flops(lambda: model.generate(**batch, max_new_tokens=GENERATED, min_new_tokens=GENERATED,
                                                       do_sample=False))
    w = Workload(prompt_tokens=TEXT, generated_tokens=GENERATED, text_before_image=BEFORE)
    assert count_flops(model.config, None, w).total(attention="kernel") == measured


@pytest.mark.parametrize("aspect", ["anyres", "anyres_max_0", "anyres_max_x", "max_9"])
def test_an_unknown_onevision_aspect_ratio_is_refused_by_name(aspect):
    from searchskip.errors import ModelError

    model = tiny_model("llava-onevision", llava_config={"vision_aspect_ratio": aspect})
    with pytest.raises(ModelError, match=f"vision_aspect_ratio '{aspect}'.*anyres_max_N"):
        geometry_of(model.config)


def test_an_anyres_model_whose_crops_keep_a_class_token_is_refused():
    from searchskip.errors import ModelError

    model = tiny_model("llava-next", llava_config={"vision_feature_select_strategy": "full"})
    with pytest.raises(ModelError, match="anyres packs each crop's patches.*'full'.*17 features for 16 patches"):
        geometry_of(model.config)


def test_llava_onevision_7b_shipped_config_on_a_480_by_640_image():
    """768 x 768 is the best fit: 5 SigLIP-so400m/384 crops (26 layers, 729 patches, no head);
    the 2 x 2 tiles' 54 x 54 features lose 7 letterbox rows top and bottom (40 x 54, under
    anyres_max_9's 9 crops, so not shrunk), plus a newline a row."""
    from pathlib import Path

    from searchskip.flops import known_config

    config = known_config("llava-hf/llava-onevision-qwen2-7b-ov-hf")
    vision = geometry_of(config).vision
    shape = vision.shape_for(480, 640)
    assert vision.crops(shape) == 5 and vision.tokens_per_image(shape) == 729 + 40 * 54 + 40
    assert vision.crop.head is None and vision.max_crops == 9
    d, ffn, t = 1152, 4304, 729
    per_crop = 2 * 3 * 14 * 14 * d * t + 26 * (t * 2 * (4 * d * d + 2 * d * ffn) + 2 * 2 * d * t * t)
    assert sum(f for _, _, f in vision.entries(1, shape)) == 5 * per_crop
    w = Workload(prompt_tokens=45, generated_tokens=2, image_shape=shape)
    base = count_flops(config, None, w)
    assert round(base.total() / 1e12, 3) == 43.937
    plans = Path(__file__).resolve().parents[1] / "spaces/plans"
    for name, ratio in [("qwen2.5-vl-7b/paper-every-2nd.yaml", 0.6370), ("visual_tokens.yaml", 0.5681),
                        ("qwen2.5-vl-7b/image-tokens-frozen.yaml", 0.4563)]:
        assert round(count_flops(config, Plan.load(plans / name), w).ratio(base), 4) == ratio, name


# --------------------------------------------------------------------------------------
# InternVL: InternViT on each tile (class token dropped), pixel shuffle, projector
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tiles", [1, 3, 5, 10])
def test_tiled_tower_matches_the_model(tiles):
    from searchskip.flops.vision import TiledVisionGeometry

    model = tiny_model("internvl")
    vision = geometry_of(model.config).vision
    assert isinstance(vision, TiledVisionGeometry) and vision.tile.class_token
    vc = model.config.vision_config
    pixels = torch.randn(tiles, 3, *vc.image_size)
    measured, out = measure_flops(lambda: model.model.get_image_features(pixels, return_dict=True))
    assert out.pooler_output.shape[:2] == (tiles, vision.tile_tokens) and vision.tile_tokens == 16
    tower = sum(f for _, _, f in vision.entries(1, (tiles,)))
    projector = sum(lin.flops_per_token for lin in vision.projector) * vision.projector_tokens((tiles,))
    assert tower + projector == measured


@pytest.mark.parametrize("size,tiles", [((16, 16), 1), ((32, 32), 5), ((48, 48), 10), ((16, 60), 5), ((100, 30), 4)])
def test_tiles_follow_the_image_processor(size, tiles):
    """The tile count of an image is the one InternVL's image processor cuts (its grid closest
    to the image's aspect ratio, plus a thumbnail when there is more than one tile)."""
    from PIL import Image

    from searchskip.processors import image_inputs
    from searchskip.testing.folders import _processor, _tokenizer, tiny_vocabulary

    vision = geometry_of(tiny_model("internvl").config).vision
    processor = _processor("internvl", _tokenizer("internvl", tiny_vocabulary("internvl", ["a"])))
    settings = {**dict(processor.image_processor.size), "max_patches": processor.image_processor.max_patches}
    assert vision.shape_for(*size, settings) == (tiles,)
    image = Image.new("RGB", (size[1], size[0]))
    assert int(image_inputs(processor, [image])["num_patches"][0]) == tiles


@pytest.mark.parametrize("side", [16, 32])
def test_tiled_generation_matches_flop_counter(side):
    model = tiny_model("internvl")
    vision = geometry_of(model.config).vision
    inputs = tiny_inputs(model, batch=1, seq=TEXT, image_sides=[side])
    measured, _ = measure_flops(lambda: model.generate(**inputs, max_new_tokens=GENERATED,
                                                       min_new_tokens=GENERATED, do_sample=False))
    w = Workload(prompt_tokens=TEXT + 2, generated_tokens=GENERATED, text_before_image=BEFORE + 1,
                 image_shape=vision.shape_for(side, side))
    assert count_flops(model.config, None, w).total(attention="kernel") == measured


def test_internvl3_8b_shipped_config_on_a_480_by_640_image():
    """A 4 x 3 grid of 448-pixel tiles matches 640 x 480 exactly: 12 tiles + a thumbnail, each
    InternViT-300M (24 layers, 1,024 patches + a class token) and 256 tokens after the shuffle."""
    from pathlib import Path

    from searchskip.flops import known_config

    config = known_config("OpenGVLab/InternVL3-8B-hf")
    vision = geometry_of(config).vision
    shape = vision.shape_for(480, 640)
    assert shape == (13,) and vision.tokens_per_image(shape) == 13 * 256
    d, ffn, t = 1024, 4096, 1025
    per_tile = 2 * 3 * 14 * 14 * d * 1024 + 24 * (t * 2 * (4 * d * d + 2 * d * ffn) + 2 * 2 * d * t * t)
    assert sum(f for _, _, f in vision.entries(1, shape)) == 13 * per_tile
    w = Workload(prompt_tokens=45, generated_tokens=2, image_shape=shape)
    base = count_flops(config, None, w)
    assert round(base.total() / 1e12, 3) == 55.910
    plans = Path(__file__).resolve().parents[1] / "spaces/plans"
    for name, ratio in [("qwen2.5-vl-7b/paper-every-2nd.yaml", 0.6745), ("visual_tokens.yaml", 0.6111),
                        ("qwen2.5-vl-7b/image-tokens-frozen.yaml", 0.5116)]:
        assert round(count_flops(config, Plan.load(plans / name), w).ratio(base), 4) == ratio, name


def test_gemma_3_4b_shipped_config():
    """SigLIP-so400m at 896 px (27 layers, 4,096 patches, no head), pooled to 256 image tokens;
    34 Gemma 3 layers, 5 sliding (window 1,024) to 1 full; the 256 image tokens see each other."""
    from pathlib import Path

    from searchskip.flops import known_config

    config = known_config("google/gemma-3-4b-it")
    geometry = geometry_of(config)
    vision = geometry.vision
    assert vision.image_tokens == 256 and vision.head is None and geometry.bidirectional_images
    d, ffn, t = 1152, 4304, 4096
    tower = 2 * 3 * 14 * 14 * d * t + 27 * (t * 2 * (4 * d * d + 2 * d * ffn) + 2 * 2 * d * t * t)
    assert sum(f for _, _, f in vision.entries(1)) == tower
    assert [lin.flops_per_token for lin in vision.projector] == [2 * 1152 * 2560]
    assert [g.sliding_window for g in geometry.layers[:6]] == [1024] * 5 + [None]
    w = Workload(prompt_tokens=45, generated_tokens=2)
    base = count_flops(config, None, w)
    assert round(base.total() / 1e12, 3) == 7.424
    plans = Path(__file__).resolve().parents[1] / "spaces/plans"
    for name, ratio in [("gemma-3-4b/paper-every-2nd.yaml", 0.8913), ("visual_tokens.yaml", 0.8939),
                        ("gemma-3-4b/image-tokens-frozen.yaml", 0.8756)]:
        assert round(count_flops(config, Plan.load(plans / name), w).ratio(base), 4) == ratio, name
