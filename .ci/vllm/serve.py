"""Answer VQA questions with vLLM's offline engine (run by tests/test_vllm_serving.py under the vLLM
virtualenv's python; it imports no searchskip). Usage: serve.py REQUEST.json -> prints one line
``RESULT {"answers": [...], "seconds": float}``, or ``RESULT {"error": "..."}`` (exit code 3) when vLLM
refuses the model (vLLM logs to stdout too: the line is found by its prefix).

REQUEST: {"model": folder, "template": "...{question}...", "max_tokens": N, "dtype": "float32",
          "questions": [{"question": str, "image": png path}, ...]}
Harness settings (not the package's): VLLM_CPU_KVCACHE_SPACE=1 GiB (else vLLM reserves most of the
machine), enforce_eager (no compilation on 2 cores), generation_config="vllm" (greedy as asked).
"""
import json
import os
import sys
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def main() -> int:
    from PIL import Image
    from vllm import LLM, SamplingParams

    request = json.load(open(sys.argv[1]))
    try:
        llm = LLM(model=request["model"], dtype=request.get("dtype", "float32"), enforce_eager=True,
                  limit_mm_per_prompt={"image": 1}, generation_config="vllm", seed=0)
    except Exception as err:  # the refusal is the result the test checks
        print("RESULT " + json.dumps({"error": f"{type(err).__name__}: {err}"}), flush=True)
        return 3
    prompts = [{"prompt": request["template"].format(question=q["question"]),
                "multi_modal_data": {"image": Image.open(q["image"]).convert("RGB")}} for q in request["questions"]]
    start = time.perf_counter()
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=request["max_tokens"]), use_tqdm=False)
    seconds = time.perf_counter() - start
    print("RESULT " + json.dumps({"answers": [o.outputs[0].text.strip() for o in outs], "seconds": seconds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
