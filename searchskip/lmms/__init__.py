"""searchskip in lmms-eval: the ``searchskip`` model of ``lmms-eval --model searchskip`` and the
retention table of ``searchskip eval JOB --lmms-eval TASKS``.

* :mod:`searchskip.lmms.plugin` -- the ``lmms_eval.models`` entry point (standard library only);
* :mod:`searchskip.lmms.target` -- what the backend scores: an export, or a job's model with a plan;
* :mod:`searchskip.lmms.backend` -- :class:`~searchskip.lmms.backend.SearchSkipLMMS`, lmms-eval's model interface;
* :mod:`searchskip.lmms.retention` -- the unplanned model and the plan side by side on lmms-eval tasks;
* :mod:`searchskip.lmms.tasks` -- a job's VQA split as a local lmms-eval task.

lmms-eval is an optional dependency (``pip install 'searchskip[lmms-eval]'``), imported only by the
modules that need it.
"""
