"""No library warning reaches a user in normal use, on the installed library versions.

transformers 5.24 renamed the KV cache's keyword (``past_key_values`` -> ``cache``); reading or
passing the old name logs "``past_key_values``/``cache_params`` are deprecated" once per
process, and passing both made the ``kernels`` package warn. Such lines land inside the live
view. Each case runs the CLI in a fresh process (transformers logs each deprecation once per
process, so an in-process test would pass after any earlier test had triggered it) over every
shipped plan file, which between them exercise every op, scope and token op while generating
with a KV cache.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

from helpers import ENV, REPO

NOISE = re.compile(r"warn|deprecat|future", re.IGNORECASE)


def test_eval_of_every_shipped_plan_prints_no_library_warning():
    plans = sorted(str(p) for p in (REPO / "spaces/plans").glob("*.yaml"))
    assert len(plans) >= 10  # every op family ships a plan file
    script = textwrap.dedent(f"""
        from searchskip import cli
        for plan in {plans!r}:
            rc = cli.main(["eval", "jobs/demo.yaml", "--limit", "8", "--json", "--plan", plan])
            if rc not in (0, None):
                raise SystemExit(f"eval --plan {{plan}} exited {{rc}}")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in (done.stdout + done.stderr).splitlines() if NOISE.search(line)]
    assert lines == [], "library warnings reached the user:\n" + "\n".join(lines[:20])


def test_odd_images_and_long_prompts_print_no_library_notice(tmp_path):
    """InternVL's tiling of images 1 or 3 pixels high made transformers guess (and log) the channel
    axis, and many tiles made a prompt longer than the tokenizer's ``model_max_length``, which a
    tokenizer logs; both reached the user as ``[transformers]`` lines while results were right."""
    script = textwrap.dedent(f"""
        import json
        from pathlib import Path

        import datasets
        import yaml
        from PIL import Image

        from searchskip import cli
        from searchskip.testing.folders import save_tiny_model

        root = Path({str(tmp_path)!r})
        model = save_tiny_model("internvl", root / "model")
        settings = json.loads((model / "processor_config.json").read_text())
        settings["image_processor"]["max_patches"] = 40  # 41 tiles of 4 tokens: over model_max_length
        (model / "processor_config.json").write_text(json.dumps(settings))
        tok = json.loads((model / "tokenizer_config.json").read_text())
        tok["model_max_length"] = 64
        (model / "tokenizer_config.json").write_text(json.dumps(tok))
        sizes = [(7, 3), (1, 1), (2000, 1), (3, 7), (400, 100)]
        def split(offset):
            ids = [str(offset + i) for i in range(5)]
            rows = dict(question_id=ids, image_id=ids, image=[Image.new("RGB", s, "red") for s in sizes],
                        question=["what color?"] * 5, answers=[["red"]] * 5)
            return datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())

        datasets.DatasetDict(train=split(0), validation=split(10), test=split(20)).save_to_disk(str(root / "data"))
        job = dict(name="quiet", model=dict(id=str(model), dtype="float32"),
                   data=dict(source="disk", path=str(root / "data"),
                             splits=dict(train="train", validation="validation", test="test")),
                   eval=dict(batch_size=2, max_new_tokens=2),
                   outputs=str(root / "out"))
        (root / "jobs").mkdir()
        (root / "jobs" / "job.yaml").write_text(yaml.safe_dump(job))
        rc = cli.main(["eval", str(root / "jobs" / "job.yaml"), "--json"])
        raise SystemExit(rc)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    noise = re.compile(r"\[transformers\]|ambiguous|Token indices|warn", re.IGNORECASE)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if noise.search(line)]
    assert lines == [], "library notices reached the user:\n" + "\n".join(lines[:20])
