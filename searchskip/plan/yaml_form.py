"""The text forms' helpers: the YAML dumper that writes a plan's small mappings and lists on one
line (:class:`_PlanDumper`, :func:`_flow`), and :func:`_json_keys`, which turns the string keys JSON
gives layer indices back into integers."""

from __future__ import annotations

from typing import Any

import yaml


class _Flow(dict):
    """A mapping written on one line (``{op: skip_attn, scope: generated}``)."""


class _FlowList(list):
    """A list written on one line (``[attn, ffn]``)."""


class _PlanDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


_PlanDumper.add_representer(_Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))
_PlanDumper.add_representer(_FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def _flow(value: Any) -> Any:
    if isinstance(value, dict):
        return _Flow(value)
    if isinstance(value, list):
        return _FlowList(value)
    return value


def _json_keys(value: Any) -> Any:
    """Turn the string keys JSON gives ``layers`` and ``prune.sparsity`` back into layer indices."""
    def ints(mapping: Any) -> Any:
        if not isinstance(mapping, dict):
            return mapping
        out = {}
        for k, v in mapping.items():
            if isinstance(k, str) and k.lstrip("-").isdigit() and k.isascii() and str(int(k)) == k:
                k = int(k)
            out[k] = v
        return out

    if not isinstance(value, dict):
        return value
    value = dict(value)
    if "layers" in value:
        value["layers"] = ints(value["layers"])
    if isinstance(value.get("prune"), dict):
        value["prune"] = dict(value["prune"])
        if "sparsity" in value["prune"]:
            value["prune"]["sparsity"] = ints(value["prune"]["sparsity"])
    return value
