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
