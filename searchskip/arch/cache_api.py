"""Where transformers puts the KV cache, across the versions searchskip supports.

Up to transformers 5.23 the decoder hands its cache to every decoder layer and attention
module as ``past_key_values=`` and returns it as ``output.past_key_values``. From 5.24 the
name is ``cache`` in both places; the old name still works for a while but logs
"``past_key_values``/``cache_params`` are deprecated" (once per process) and is removed in a
later release. A hook that reads ``kwargs["past_key_values"]`` sees no cache at all on 5.24+,
which silently turned token-scoped plans into dense ones while decoding.

This module is the one place that knows the name. It never uses a deprecated spelling on a
version that has the new one (no deprecation line reaches the user), and it reads a call's
keyword arguments as given, so a caller that still passes the old name to a hooked module
is understood too.
"""

from __future__ import annotations

from typing import Any

from transformers.modeling_outputs import BaseModelOutputWithPast

CACHE_KWARG: str = "cache" if "cache" in getattr(BaseModelOutputWithPast, "__dataclass_fields__", {}) \
    else "past_key_values"
"""The keyword under which the installed transformers passes the KV cache to decoder layers
and attention modules, and the field under which model outputs return it."""

_OLD_KWARG = "past_key_values"


def call_cache(kwargs: dict) -> Any:
    """The KV cache among a module call's keyword arguments (``None`` when there is none)."""
    cache = kwargs.get(CACHE_KWARG)
    if cache is None and CACHE_KWARG != _OLD_KWARG:
        cache = kwargs.get(_OLD_KWARG)  # a caller still using the deprecated name
    return cache


def output_cache(output: Any) -> Any:
    """The KV cache a model call returned (``None`` for tuples and outputs without one).

    Read through the output's mapping interface under the installed version's own field name,
    which never triggers transformers' backward-compatibility warning."""
    if isinstance(output, tuple) or not hasattr(output, "get"):
        return None
    return output.get(CACHE_KWARG)
