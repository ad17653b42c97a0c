"""Analytic FLOP counts of one sample, from a model's config, a plan and a workload.

    from searchskip.flops import Workload, count_flops
    w = Workload(prompt_tokens=40, generated_tokens=2)          # 1 image, its tokens from the config
    report = count_flops(config, plan, w)                        # no weights are needed
    report.total_flops, report.ratio(count_flops(config, None, w)), report.by_component()

No weights are loaded: :func:`~searchskip.flops.geometry.geometry_of` builds the model on
the ``meta`` device and reads its shapes through the architecture adapters.

**What is counted.** Matrix multiplications and attention only -- every ``nn.Linear`` at
``2 * in * out`` FLOPs per token, the patch convolution as a matmul (``2 * 3p^2 * width``
per patch), and attention as ``2 * h * d`` for the q.k scores plus ``2 * h * d`` for the
weighted sum of v, per query-key pair. Elementwise work (norms, activations, residual adds,
biases, rotary embeddings, softmax, parallel_blocks' sum or average) is ignored: it is below
0.1% of a decoder layer. This is what ``torch.utils.flop_counter.FlopCounterMode`` counts.

**Per sample** (:class:`~searchskip.flops.workload.Workload`): the vision tower and projector
run once per image (tower: patches + class token, every encoder layer -- HF runs the whole
tower even when ``vision_feature_layer`` is -2 --, bidirectional attention over all its
tokens); the LLM's prefill runs over the ``S`` prompt positions (image + text); the
``generated_tokens = N`` answer tokens cost the prefill plus ``N - 1`` decode steps with a KV
cache (transformers 5.x ``generate`` takes the first token from the prefill's last position
and never feeds the last one back); ``lm_head`` runs on the last position only, once per
generated token (``N`` times).

**Attention conventions** (``attention=``): ``causal`` (the default, and what budgets use
unless they say otherwise): query position ``p`` attends ``min(p + 1, W)`` keys (``W`` a
sliding window, else unbounded), so a full prefill costs ``S(S+1)/2`` pairs; ``kernel``: what
the kernel computes -- SDPA's prefill computes the whole ``S x S`` square, a decode step one
query against the cached keys (same as causal). The **causal correction** a measured count
(``FlopCounterMode``, which takes the kernel's shapes) exceeds the causal count by is, per
decoder layer whose attention runs over the whole prompt::

    4 * h * d * (S^2 - S(S+1)/2)  =  2 * h * d * S * (S - 1)

(with a sliding window ``W < S``: ``4 * h * d * (S^2 - W(W+1)/2 - (S - W) W)``); decode steps
and the vision tower need none. :attr:`FlopReport.causal_correction` gives it for any plan.

**Ops** (the position classes of a sample: text before the image, image, the rest of the
prompt -- together ``prompt`` --, and ``generated``; a scope covers some of them, see
:data:`~searchskip.flops.count.SCOPE_CLASSES`):

* ``keep``, ``parallel_attn_ffn``, ``parallel_blocks``: everything runs; parallel ops lower
  the depth (sequential sublayers, reported beside FLOPs), not the FLOPs.
* ``skip_block`` and ``drop``: nothing in that layer (for every position / the positions of
  the scope).
* ``skip_ffn`` with a scope: the MLP runs for the positions outside the scope only.
* ``skip_attn`` with a scope: q, o and attention run for the positions outside the scope,
  each query over its causal prefix; K/V are projected for every position up to the last
  one whose query runs (:mod:`searchskip.ops.scope`: "only where a computed query needs
  them"). So ``generated``: a normal prefill, nothing at decode; ``prompt``: K/V of the
  prompt, and full attention for generated positions (over all previous keys);
  ``non_visual``: q/o/attention for image positions only (over the earlier positions), K/V
  of the positions up to the last image token, nothing at decode (a text-only model:
  nothing at all); ``visual``: q/o/attention for the text and generated positions (each over
  its causal prefix), K/V of every position (the image tokens' included: the text attends to
  them), and decode steps as usual. ``skip_block`` with a scope = ``skip_attn`` + ``skip_ffn`` with it.
  The kernel convention counts one prefill call as (computed queries) x (keys projected in
  it), as the SDPA call is given them.
* ``prune``: ``ffn_channels`` shrinks the FFN (``round(sparsity * channels)`` channels
  removed), lowering dense FLOPs; ``unstructured`` and ``"2:4"`` leave dense FLOPs and lower
  only ``sparse`` FLOPs (a linear's dense FLOPs times its nonzero fraction).

**Token keys** (plan-level; they compose with every layer op, ``drop`` and ``prune``, through
the same per-class sets of :class:`~searchskip.flops.count.LayerExec`):

* ``visual_tokens {after_layer: k, keep: r, rank}``: at layers ``k ..`` the image class has
  ``K = kept_visual_tokens(n_img, r)`` = ``round(r * n_img)`` positions instead of ``n_img``
  (:func:`~searchskip.plan.kept_visual_tokens`, the runtime's rule); the dropped positions
  are neither computed nor cached there, and later positions shift left: the prompt is
  ``S' = S - (n_img - K)`` positions long, a query at reduced position ``p`` attends
  ``min(p + 1, W)`` keys of the reduced sequence (the kernel convention: ``S' x S'`` for a
  full prefill), and a decode step attends over the reduced cache. Every op of those layers
  (scopes included: ``non_visual`` runs the ``K`` kept image queries) counts over the reduced
  classes. With a sliding window ``W`` the causal count takes the window in reduced
  positions (the last ``W`` kept keys), which is exact when ``W`` covers the sequence
  (``W >= S' + N``; Mistral's 4096 on LLaVA workloads); the runtime masks the window in
  absolute positions, so for a shorter window the causal count is an upper bound (the
  kernel count, the rectangle SDPA is given, is exact either way). ``rank: attention`` adds
  one matmul to the prefill at layer ``k - 1`` (part ``rank_scores``): the last prompt
  query against the keys of all ``S`` prompt positions, ``2 * h * d * S`` FLOPs (``h``
  query heads, ``d`` head dim of layer ``k - 1``), the same in both attention conventions
  (its softmax, mean over heads and top-k are elementwise). ``rank: uniform`` adds nothing.
  With no image positions (a text-only model, or ``images: 0``) there is nothing to rank or
  drop: ``visual_tokens`` changes nothing and adds nothing. The vision tower, projector,
  layers ``< k`` and ``lm_head`` are unchanged (dropped positions still reach the final norm
  with their hidden state).
* ``early_exit {layer: e, scope: generated}``: at every layer ``> e`` generated positions
  compute nothing -- no q/k/v/o, attention or FFN --, exactly ``skip_block`` with scope
  ``generated`` there, on top of the layer's own op for the prompt (its cache holds the prompt
  only). ``lm_head`` still runs once per generated token. The decode depth falls accordingly.

The budget convention (:class:`~searchskip.flops.report.Budget`): a ratio of the unplanned
model's FLOPs on the same workload or absolute GFLOPs per sample, of ``dense`` (default) or
``sparse`` FLOPs, with ``causal`` (default) or ``kernel`` attention.
"""

from searchskip.flops.count import (
    CLASSES,
    SCOPE_CLASSES,
    LayerExec,
    causal_pairs,
    count_flops,
    kept_ffn_channels,
    layer_execution,
)
from searchskip.flops.geometry import (
    KNOWN_CONFIGS,
    ArchGeometry,
    DecoderLayerGeometry,
    Linear,
    VisionGeometry,
    geometry_of,
    known_config,
    resolve_config,
)
from searchskip.flops.report import (
    ATTENTIONS,
    COMPONENTS,
    COUNTS,
    RANK_SCORES,
    Budget,
    Depth,
    FlopEntry,
    FlopReport,
    ParamCount,
)
from searchskip.flops.workload import Workload, measure_workload

__all__ = [
    "ATTENTIONS",
    "CLASSES",
    "COMPONENTS",
    "COUNTS",
    "KNOWN_CONFIGS",
    "RANK_SCORES",
    "SCOPE_CLASSES",
    "ArchGeometry",
    "Budget",
    "DecoderLayerGeometry",
    "Depth",
    "FlopEntry",
    "FlopReport",
    "LayerExec",
    "Linear",
    "ParamCount",
    "VisionGeometry",
    "Workload",
    "causal_pairs",
    "count_flops",
    "geometry_of",
    "kept_ffn_channels",
    "known_config",
    "layer_execution",
    "measure_workload",
    "resolve_config",
]
