"""The search over plans: what it may choose (:mod:`searchskip.search.space`)."""

from searchskip.search.space import (
    NO_EXIT,
    PARAM_END_LAYER,
    PARAM_EXIT_LAYER,
    PARAM_MODE,
    PARAM_PRUNE_METHOD,
    PARAM_PRUNE_SPARSITY,
    PARAM_PRUNE_STRUCTURE,
    PARAM_SCOPE,
    PARAM_SKIP_INTERVAL,
    PARAM_START_LAYER,
    PARAM_VISUAL_AFTER_LAYER,
    PARAM_VISUAL_KEEP,
    PARAM_VISUAL_RANK,
    SPACE_KEYS,
    SPACE_VERSION,
    EarlyExitChoices,
    FloatRange,
    IntRange,
    LayerRange,
    PaperSpace,
    PerLayerSpace,
    PruneChoices,
    Space,
    VisualTokensChoices,
    layer_param,
)

__all__ = [
    "NO_EXIT", "PARAM_EXIT_LAYER", "PARAM_VISUAL_AFTER_LAYER", "PARAM_VISUAL_KEEP", "PARAM_VISUAL_RANK",
    "EarlyExitChoices", "VisualTokensChoices",
    "PARAM_END_LAYER", "PARAM_MODE", "PARAM_PRUNE_METHOD", "PARAM_PRUNE_SPARSITY", "PARAM_PRUNE_STRUCTURE",
    "PARAM_SCOPE", "PARAM_SKIP_INTERVAL", "PARAM_START_LAYER", "SPACE_KEYS", "SPACE_VERSION",
    "FloatRange", "IntRange", "LayerRange", "PaperSpace", "PerLayerSpace", "PruneChoices", "Space", "layer_param",
]
