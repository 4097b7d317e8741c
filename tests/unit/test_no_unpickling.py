"""No code path of ours unpickles (the run-level secret and export checks: tests/e2e/test_security.py)."""

from __future__ import annotations

import re

from conftest import REPO


def test_code_unpickles_nothing_itself() -> None:
    """No pickle/joblib/dill loads and no torch.load(weights_only=False) in the library or the entry scripts."""
    pattern = re.compile(r"\b(c?pickle|cloudpickle|joblib|dill)\.loads?\(|weights_only\s*=\s*False")
    offenders = [f"{path.relative_to(REPO)}:{n}" for path in [*(REPO / "dpo_ray").rglob("*.py"), *(REPO / "pipelines").glob("*.py")]
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
