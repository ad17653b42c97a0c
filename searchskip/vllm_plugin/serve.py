"""Answer VQA questions with vLLM's offline engine: ``python -m searchskip.vllm_plugin.serve REQUEST.json``
in vLLM's virtualenv (standard library, PIL and vLLM only). What ``tests/test_vllm_serving.py`` and
``python -m searchskip.bench.vllm`` run there. Prints one line ``RESULT {"answers": [...], "seconds":
float}`` (``seconds``: the generate call alone, engine start-up excluded), or ``RESULT {"error":
"..."}`` with exit code 3 when vLLM refuses the model (vLLM logs to stdout too: the line is found by
its prefix).

REQUEST: {"model": folder, "template": "...{question}...", "max_tokens": N, "dtype": "float32",
          "questions": [{"question": str, "image": png path}, ...], "hf_overrides": {...} (optional),
          "logprobs": K (optional: also return the first generated token's top-K log-probabilities),
          "kv_cache_gib": G (default 1)}
Settings for a small CPU machine: the KV cache is sized explicitly (``VLLM_CPU_KVCACHE_SPACE``; else
vLLM reserves most of the machine's memory), ``enforce_eager`` (no compilation), and
``generation_config="vllm"`` (greedy as asked, not the folder's defaults).
"""
import json
import os
import sys
import time


def main() -> int:
    request = json.load(open(sys.argv[1]))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(request.get("kv_cache_gib", 1))))
    from PIL import Image
    from vllm import LLM, SamplingParams

    try:
        llm = LLM(model=request["model"], dtype=request.get("dtype", "float32"), enforce_eager=True,
                  limit_mm_per_prompt={"image": 1}, generation_config="vllm", seed=0,
                  hf_overrides=request.get("hf_overrides"))
    except Exception as err:  # noqa: BLE001 - a refusal is a result: the caller checks what it says
        print("RESULT " + json.dumps({"error": f"{type(err).__name__}: {err}"}), flush=True)
        return 3
    prompts = [{"prompt": request["template"].format(question=q["question"]),
                "multi_modal_data": {"image": Image.open(q["image"]).convert("RGB")}} for q in request["questions"]]
    params = SamplingParams(temperature=0, max_tokens=request["max_tokens"], logprobs=request.get("logprobs"))
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    result = {"answers": [o.outputs[0].text.strip() for o in outs], "seconds": seconds}
    if request.get("logprobs"):  # the first generated token's top log-probabilities, per question
        result["first_logprobs"] = [{str(t): p.logprob for t, p in o.outputs[0].logprobs[0].items()} for o in outs]
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
