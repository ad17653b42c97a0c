"""Fixed-resolution towers (CLIP, SigLIP, InternViT): every image is the same patches, one LLM
position each (InternVL then merges them, see ``tiled.py``).

CLIP and InternViT prepend a class token; SigLIP has none, and (``vision_use_head``, SigLIP's default, off
in LLaVA-OneVision and Gemma 3) runs an attention-pooling head after its encoder: one learned
probe attends to every patch (``nn.MultiheadAttention``: the probe's query, every patch's key
and value, the output projection) and an MLP runs on the pooled vector. The wrapper models
discard the head's output, but HF runs it, so it is counted (part ``head``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from searchskip.errors import ModelError
from searchskip.flops.linear import Linear
from searchskip.flops.vision.base import Grid, VisionCount, VisionLayerGeometry, linears_of

__all__ = ["PoolingHead", "VisionGeometry", "fixed_tower"]


@dataclass(frozen=True)
class PoolingHead:
    """SigLIP's attention-pooling head: ``probes`` learned queries over a tower's tokens."""

    width: int
    """``embed_dim`` of its attention (queries, keys and values alike)."""
    probes: int
    linears: tuple[Linear, ...]
    """Its linears (the attention's output projection and the MLP), each run once per probe."""

    def flops(self, tokens: int) -> int:
        """FLOPs of the head over ``tokens`` tower tokens of one image."""
        d = self.width
        projections = 2 * d * d * (self.probes + 2 * tokens)  # q of the probes; k and v of every token
        attention = 2 * 2 * d * self.probes * tokens  # scores and weighted sum over all heads
        return projections + attention + self.probes * sum(lin.flops_per_token for lin in self.linears)


@dataclass(frozen=True)
class VisionGeometry(VisionCount):
    """A CLIP or SigLIP vision tower (fixed resolution) and the multimodal projector of a LLaVA model."""

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
    """LLM positions (projector outputs) per image: the tower's tokens, less the first with
    ``vision_feature_select_strategy: default`` (CLIP's class token; a patch of SigLIP's)."""
    projector: tuple[Linear, ...]
    head: PoolingHead | None = None
    """SigLIP's attention-pooling head where the tower runs it."""

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
        if self.head is not None:
            yield None, "head", images * self.head.flops(t)


def _pooling_head(tower: Any) -> tuple[PoolingHead | None, set[int]]:
    """SigLIP's pooling head in ``tower`` (``None`` where it has none) and its modules' ids."""
    from torch import nn

    heads = [m for m in tower.modules()
             if hasattr(m, "probe") and isinstance(getattr(m, "attention", None), nn.MultiheadAttention)]
    if not heads:
        return None, set()
    if len(heads) > 1:
        raise ModelError(f"{type(tower).__name__} has {len(heads)} attention-pooling heads; FLOP counting knows one")
    head = heads[0]
    attention = head.attention
    if not attention._qkv_same_embed_dim:
        raise ModelError(f"{type(tower).__name__}'s pooling head projects keys and values from another width")
    return (PoolingHead(width=int(attention.embed_dim), probes=int(head.probe.shape[1]), linears=linears_of(head)),
            {id(m) for m in head.modules()})


def _attention(layer: Any) -> Any:
    """An encoder layer's self-attention (``self_attn``: CLIP, SigLIP; ``attention``: InternViT)."""
    attention = getattr(layer, "self_attn", None) or getattr(layer, "attention", None)
    if attention is None or not hasattr(attention, "num_heads"):
        raise ModelError(f"{type(layer).__name__} has no self-attention FLOP counting can read (self_attn / attention "
                         "with num_heads and head_dim)")
    return attention


def fixed_tower(model: Any, adapter: Any, config: Any) -> VisionGeometry:
    """The :class:`VisionGeometry` of a CLIP or SigLIP tower and its projector, read from ``model``."""
    from torch import nn

    tower = adapter.vision_tower(model)
    projector = adapter.projector(model)
    vc = config.vision_config
    layer_lists = [m for name, m in tower.named_modules()
                   if name.endswith(("encoder.layers", "encoder.layer")) and isinstance(m, nn.ModuleList)]
    convs = [m for m in tower.modules() if isinstance(m, nn.Conv2d)]
    if len(layer_lists) != 1 or len(convs) != 1:
        raise ModelError(f"{type(tower).__name__} is not laid out like a CLIP, SigLIP or InternViT vision tower "
                         "(one patch convolution, one encoder.layers list)")
    head, in_head = _pooling_head(tower)
    in_layers = {id(m) for m in layer_lists[0].modules()} | in_head
    stray = [name for name, m in tower.named_modules() if isinstance(m, nn.Linear) and id(m) not in in_layers]
    if stray:
        raise ModelError(f"{type(tower).__name__} has linears outside its encoder layers ({', '.join(stray)}) "
                         "that FLOP counting does not know how to place")
    layers = tuple(VisionLayerGeometry(linears=linears_of(layer), heads=int(_attention(layer).num_heads),
                                       head_dim=int(_attention(layer).head_dim)) for layer in layer_lists[0])
    conv = convs[0]
    if tuple(conv.kernel_size) != tuple(conv.stride):
        raise ModelError("the patch convolution's stride differs from its kernel size")
    if conv.kernel_size[0] != conv.kernel_size[1]:
        raise ModelError("the patch convolution is not square")
    patch = int(conv.kernel_size[0])
    side = vc.image_size
    height, width = (side, side) if isinstance(side, int) else (int(side[0]), int(side[1]))
    patches = (height // patch) * (width // patch)
    class_token = any(hasattr(m, "class_embedding") or hasattr(m, "cls_token") for m in tower.modules())
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    image_tokens = patches + int(class_token) - (1 if strategy == "default" else 0)
    return VisionGeometry(
        channels=int(conv.in_channels), patch_size=patch, width=int(conv.out_channels), patches=patches,
        class_token=class_token, layers=layers, image_tokens=image_tokens, projector=linears_of(projector),
        head=head,
    )
