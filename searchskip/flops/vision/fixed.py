"""Fixed-resolution towers (CLIP): every image is the same patches, one LLM position each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from searchskip.errors import ModelError
from searchskip.flops.linear import Linear
from searchskip.flops.vision.base import Grid, VisionCount, VisionLayerGeometry, linears_of

__all__ = ["VisionGeometry", "fixed_tower"]


@dataclass(frozen=True)
class VisionGeometry(VisionCount):
    """A CLIP vision tower (fixed resolution) and the multimodal projector of a LLaVA model."""

    channels: int
    patch_size: int
    width: int
    patches: int
    """Patches per image (``(image_size // patch_size) ** 2``)."""
    class_token: bool
    layers: tuple[VisionLayerGeometry, ...]
    """Every encoder layer that runs (all of them: HF runs the whole tower even when
    ``vision_feature_layer`` selects an earlier hidden state)."""
    image_tokens: int
    """LLM positions (projector outputs) per image: the patches, plus the class token with
    ``vision_feature_select_strategy: full``."""
    projector: tuple[Linear, ...]

    @property
    def tokens(self) -> int:
        """Sequence length inside the tower (patches + class token)."""
        return self.patches + int(self.class_token)

    def tokens_per_image(self, grid: Grid | None = None) -> int:
        return self.image_tokens

    def entries(self, images: int, grid: Grid | None = None) -> Iterator[tuple[int | None, str, float]]:
        t = self.tokens
        patch = 2 * self.channels * self.patch_size ** 2 * self.width  # the conv as a matmul, per patch
        yield None, "patch_embed", images * self.patches * patch
        for j, layer in enumerate(self.layers):
            for lin in layer.linears:
                yield j, lin.name, images * t * lin.flops_per_token
            pairs = images * t * t  # bidirectional: every query sees every key, as computed
            yield j, "scores", 2 * layer.heads * layer.head_dim * pairs
            yield j, "weighted_sum", 2 * layer.heads * layer.head_dim * pairs


def fixed_tower(model: Any, adapter: Any, config: Any) -> VisionGeometry:
    from torch import nn

    tower = adapter.vision_tower(model)
    projector = adapter.projector(model)
    vc = config.vision_config
    layer_lists = [m for name, m in tower.named_modules()
                   if name.endswith("encoder.layers") and isinstance(m, nn.ModuleList)]
    convs = [m for m in tower.modules() if isinstance(m, nn.Conv2d)]
    if len(layer_lists) != 1 or len(convs) != 1:
        raise ModelError(f"{type(tower).__name__} is not laid out like a CLIP vision tower "
                         "(one patch convolution, one encoder.layers list)")
    in_layers = {id(m) for m in layer_lists[0].modules()}
    stray = [name for name, m in tower.named_modules() if isinstance(m, nn.Linear) and id(m) not in in_layers]
    if stray:
        raise ModelError(f"{type(tower).__name__} has linears outside its encoder layers ({', '.join(stray)}) "
                         "that FLOP counting does not know how to place")
    layers = tuple(VisionLayerGeometry(linears=linears_of(layer), heads=int(layer.self_attn.num_heads),
                                       head_dim=int(layer.self_attn.head_dim)) for layer in layer_lists[0])
    conv = convs[0]
    if tuple(conv.kernel_size) != tuple(conv.stride):
        raise ModelError("the patch convolution's stride differs from its kernel size")
    patch = int(conv.kernel_size[0])
    patches = (int(vc.image_size) // patch) ** 2
    class_token = any(hasattr(m, "class_embedding") for m in tower.modules())
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    image_tokens = patches + (1 if (strategy == "full" and class_token) else 0)
    return VisionGeometry(
        channels=int(conv.in_channels), patch_size=patch, width=int(conv.out_channels), patches=patches,
        class_token=class_token, layers=layers, image_tokens=image_tokens, projector=linears_of(projector),
    )
