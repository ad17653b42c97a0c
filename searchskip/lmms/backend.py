"""lmms-eval's ``searchskip`` model: :class:`SearchSkipLMMS`.

    lmms-eval --model searchskip --model_args export=outputs/demo/export/trial-14 --tasks vqav2_val
    lmms-eval --model searchskip --model_args job=jobs/demo.yaml,plan=spaces/plans/skip_ffn.yaml --tasks ...

The model is loaded by :func:`searchskip.lmms.target.load_target` (the plan active: an export's
runtime plan, or ``plan=`` on the job's model) on the job's device and dtype (``--device`` and
``dtype=`` override them). Questions are answered as ``searchskip eval`` answers them: the model's
prompt template around lmms-eval's context (the task's question with its pre/post prompt), the
processor, left padding, batched (``--batch_size``) and greedy; the answer is cut at the task's
``until`` strings. ``loglikelihood`` (multiple-choice tasks) scores each continuation after the
prompt with the plan active (the continuation's positions count as generated tokens) and returns
its loss, lmms-eval's convention (the mean negative log-likelihood per token: lower is likelier).

A simple-mode model (lmms-eval's ``is_simple``): one image per question. Sampling
(``temperature > 0``), several images or none, and multi-round generation are refused with a
message naming the task.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from lmms_eval.api.model import lmms

__all__ = ["SearchSkipLMMS", "WORKLOAD_ROWS"]

WORKLOAD_ROWS = 256
"""Questions per task kept (question, image, answer) to measure the task's workload for FLOP counts."""
DEFAULT_MAX_NEW_TOKENS = 16


class SearchSkipLMMS(lmms):
    """A searchskip model with its plan active, as lmms-eval's model interface wants it."""

    is_simple = True

    def __init__(self, export: str | None = None, job: str | None = None, plan: str | None = None,
                 batch_size: int | str = 1, device: str | None = None, dtype: str | None = None,
                 max_new_tokens: int | None = None, **unknown: Any) -> None:
        super().__init__()
        from searchskip.errors import ConfigError, Problem
        from searchskip.lmms.target import load_target

        unknown = {k: v for k, v in unknown.items() if k != "max_batch_size"}  # lmms-eval's, for batch_size=auto
        if unknown:
            raise ConfigError([Problem(None, "model_args", f"unknown argument(s) {', '.join(sorted(unknown))} for the "
                                                           "searchskip model (it takes export, job, plan, dtype, "
                                                           "max_new_tokens; --batch_size and --device)")])
        try:
            self.batch_size_per_gpu = int(batch_size)
        except (TypeError, ValueError):
            raise ConfigError([Problem(None, "--batch_size", f"must be a whole number for the searchskip model, "
                                                             f"but got {batch_size!r}")]) from None
        if self.batch_size_per_gpu < 1:
            raise ConfigError([Problem(None, "--batch_size", f"must be >= 1, but got {batch_size!r}")])
        if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                           or max_new_tokens < 1):
            raise ConfigError([Problem(None, "model_args", f"max_new_tokens must be a whole number >= 1, but got "
                                                           f"{max_new_tokens!r}")])
        self.target = load_target(export=export, job=job, plan=plan, device=device, dtype=dtype)
        self.max_new_tokens = max_new_tokens
        self.task_max_new_tokens: dict[str, int] = {}
        self.seen: dict[str, list[dict]] = defaultdict(list)
        """Task -> up to :data:`WORKLOAD_ROWS` rows ``{question, image, answers}`` answered (the prompt
        as the model got it, the answer it gave): what the task's FLOP count is measured on."""

    @property
    def loaded(self) -> Any:
        return self.target.loaded

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # ---- requests -----------------------------------------------------------------------------

    def _image(self, doc_to_visual: Any, task: str, split: str, doc_id: int) -> Any:
        from searchskip.errors import DataError

        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = visuals if isinstance(visuals, (list, tuple)) else [visuals]
        if len(visuals) != 1 or not hasattr(visuals[0], "convert"):
            raise DataError(f"task {task}, document {doc_id}: the searchskip model answers one image per question "
                            f"(VQA), but this document gives {len(visuals)} visual(s) "
                            f"({', '.join(type(v).__name__ for v in visuals) or 'none'})")
        return visuals[0].convert("RGB")

    @staticmethod
    def _question(context: str, placeholder: str) -> str:
        """lmms-eval's context as the template's ``{question}``: the image goes where the template puts it."""
        return context.replace("<image>", "").replace(placeholder, "").strip()

    def _placeholder(self) -> str:
        from searchskip.processors import image_placeholder

        return image_placeholder(self.loaded.processor)

    def _max_new_tokens(self, task: str, gen_kwargs: dict) -> int:
        from searchskip.errors import ConfigError, Problem

        if float(gen_kwargs.get("temperature") or 0) > 0 or gen_kwargs.get("do_sample"):
            raise ConfigError([Problem(None, f"task {task}", "asks for sampling (temperature > 0 or do_sample); the "
                                                             "searchskip model answers greedily, as the search scored "
                                                             "plans; set --gen_kwargs temperature=0")])
        if gen_kwargs.get("num_beams", 1) not in (1, None):
            raise ConfigError([Problem(None, f"task {task}", "asks for beam search; the searchskip model answers "
                                                             "greedily (num_beams=1)")])
        return int(self.max_new_tokens or gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)

    def generate_until(self, requests: list) -> list[str]:
        """Answers of ``generate_until`` requests (lmms-eval's simple layout: ``(context, gen_kwargs,
        doc_to_visual, doc_id, task, split)``), in the requests' order."""
        from searchskip.eval.generate import decode_answers, greedy_generate, prompt_inputs

        placeholder = self._placeholder()
        groups: dict[tuple, list[int]] = defaultdict(list)
        rows = []
        for i, request in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            image = self._image(doc_to_visual, task, split, doc_id)
            rows.append({"context": context, "question": self._question(context, placeholder), "image": image,
                         "task": task, "until": until, "gen_kwargs": gen_kwargs})
            key = (task, json.dumps(gen_kwargs, sort_keys=True, default=str), image.size)
            groups[key].append(i)
        answers: list[str | None] = [None] * len(requests)
        bar = _progress(len(requests), "searchskip: generate_until")
        for (task, _, _), members in groups.items():
            max_new = self._max_new_tokens(task, rows[members[0]]["gen_kwargs"])
            self.task_max_new_tokens[task] = max_new
            for start in range(0, len(members), self.batch_size):
                batch = members[start:start + self.batch_size]
                inputs = prompt_inputs(self.loaded, [rows[i]["image"] for i in batch], [rows[i]["question"] for i in batch])
                out = greedy_generate(self.loaded, inputs, max_new)
                texts = decode_answers(self.loaded, out[:, inputs["input_ids"].shape[1]:])
                for i, text in zip(batch, texts):
                    for stop in rows[i]["until"]:
                        if stop:
                            text = text.split(stop)[0]
                    answers[i] = text.strip()
                    self._keep(task, rows[i], answers[i])
                    self.cache_hook.add_partial("generate_until", (rows[i]["context"], rows[i]["gen_kwargs"]), answers[i])
                bar(len(batch))
        return [a if a is not None else "" for a in answers]

    def _keep(self, task: str, row: dict, answer: str) -> None:
        if len(self.seen[task]) < WORKLOAD_ROWS:
            self.seen[task].append({"question": row["question"], "image": row["image"], "answers": [answer]})

    def loglikelihood(self, requests: list) -> list[Any]:
        """``(loss of the continuation after the prompt, whether greedy decoding gives it)`` for
        lmms-eval's ``loglikelihood`` requests (``(context, continuation or doc_to_target,
        doc_to_visual, doc_id, task, split)``), the plan active. The loss is lmms-eval's convention,
        as its own models (``llava_hf``) return it and its ``multiple_choice`` scoring reads it (the
        argmin wins): the mean negative log-likelihood of the continuation's tokens. Each result is
        given as the installed lmms-eval keeps it (:func:`_response`)."""
        import torch

        from searchskip.apply import plan_context
        from searchskip.eval.generate import prompt_inputs

        placeholder = self._placeholder()
        tokenizer = self.loaded.processor.tokenizer
        out = []
        bar = _progress(len(requests), "searchskip: loglikelihood")
        for request in requests:
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            if callable(continuation):
                continuation = continuation(self.task_dict[task][split][doc_id])
            image = self._image(doc_to_visual, task, split, doc_id)
            inputs = prompt_inputs(self.loaded, [image], [self._question(context, placeholder)])
            n = inputs["input_ids"].shape[1]
            target = torch.tensor([tokenizer(str(continuation), add_special_tokens=False)["input_ids"]],
                                  device=inputs["input_ids"].device, dtype=inputs["input_ids"].dtype)
            full = dict(inputs, input_ids=torch.cat([inputs["input_ids"], target], dim=1),
                        attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(target)], dim=1))
            with torch.inference_mode(), plan_context(self.loaded.model, prompt_length=n):
                logits = self.loaded.model(**full, use_cache=False).logits[0, n - 1:-1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            picked = logprobs.gather(1, target[0][:, None])[:, 0]
            greedy = bool(torch.equal(logprobs.argmax(-1), target[0]))
            out.append((float(-picked.mean()), greedy))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), out[-1])
            bar(1)
        return [_response(x) for x in out]

    def generate_until_multi_round(self, requests: list) -> list[str]:
        task = requests[0].args[-2] if requests else "?"
        raise NotImplementedError(f"task {task}: the searchskip model does not serve multi-round generation "
                                  "(generate_until_multi_round); it serves generate_until (VQA, captioning) and "
                                  "loglikelihood (multiple choice) tasks")


def _response(scored: tuple[float, bool]) -> Any:
    """A ``loglikelihood`` result as lmms-eval's evaluator keeps it: 0.7.3's
    ``unwrap_generation_output`` turns a ``(float, bool)`` tuple into its ``str`` (and the task's
    ``process_results`` then fails to unpack it), but keeps a ``GenerationResult``'s ``text`` as it
    is; versions that keep the tuple get the tuple."""
    from lmms_eval.api.instance import GenerationResult, unwrap_generation_output

    if unwrap_generation_output(scored)[0] == scored:
        return scored
    return GenerationResult(text=scored, token_counts=None)


def _progress(total: int, label: str):
    """A line-based progress callback (lmms-eval's own bars are tqdm; ours go to stderr every 10%)."""
    import sys

    done = [0, 0]

    def advance(k: int) -> None:
        done[0] += k
        step = max(1, total // 10)
        if done[0] - done[1] >= step or done[0] == total:
            done[1] = done[0]
            print(f"{label}: {done[0]}/{total}", file=sys.stderr, flush=True)

    return advance
