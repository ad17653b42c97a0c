"""``searchskip finetune``: recover the accuracy a plan costs by training with the plan active.

* :func:`run_finetune` (:mod:`searchskip.finetune.trainer`) runs a job's ``finetune:`` section;
* :mod:`searchskip.finetune.checkpoint` writes and reads its resumable checkpoints (safetensors + JSON).

The recipe a job carries is usually the ``finetune.yaml`` of an export
(:mod:`searchskip.export.recipe`).
"""

from searchskip.finetune.trainer import FinetuneResult, finetune_out, lr_at, run_finetune

__all__ = ["FinetuneResult", "finetune_out", "lr_at", "run_finetune"]
