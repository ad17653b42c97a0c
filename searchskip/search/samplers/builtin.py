"""optuna's own samplers, as ``search.sampler`` names them."""

from __future__ import annotations

from typing import Any

from searchskip.errors import ConfigError
from searchskip.search.samplers.registry import SamplerContext


def tpe(c: SamplerContext) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=c.seed)


def nsga2(c: SamplerContext) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=c.seed)


def random(c: SamplerContext) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=c.seed)


def grid(c: SamplerContext) -> Any:
    import optuna

    return optuna.samplers.GridSampler(c.space.grid(c.num_layers), seed=c.seed)


def gp(c: SamplerContext) -> Any:
    import optuna

    try:
        import scipy  # noqa: F401  (GPSampler needs it)
    except ImportError:
        raise ConfigError("search.sampler: 'gp' needs scipy, which is not installed here; "
                          "pip install scipy, or use sampler: tpe") from None
    return optuna.samplers.GPSampler(seed=c.seed)
