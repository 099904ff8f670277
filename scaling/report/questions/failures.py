"""Which runs did not reach their target, and which have not finished? The finding that counts them (runs
that have not finished count for nothing else in the report).
"""

from __future__ import annotations

from collections import Counter

from scaling.report.finding import OBSERVATION, Finding, status_words
from scaling.report.study import Study

QUESTION = "Which runs did not reach their target?"


def failures(study: Study) -> list[Finding]:
    """Runs that ended without reaching their target (throughput probes without one, `completed`, aside), and
    runs that have not finished yet (they count for nothing else in the report)."""
    runs = [run for run in study.runs if run.target is not None or run.status not in ("completed", "reached")]
    if not runs:
        return []
    unfinished = Counter(run.status for run in runs if not run.finished)
    ended = [run for run in runs if run.finished]
    missed = Counter(run.status for run in ended if not run.reached)
    numbers = {"runs": len(runs), "finished": len(ended), "not_reached": dict(missed), "unfinished": dict(unfinished)}
    runs_word = "finished runs" if unfinished else "runs"
    if not ended:
        text = f"None of the {len(runs)} runs has finished"
    elif not missed:
        text = f"Every one of the {len(ended)} {runs_word} reached {study.target_text()}"
    else:
        counts = ", ".join(f"{n} {status_words(status)}" for status, n in missed.most_common())
        text = f"{sum(missed.values())} of {len(ended)} {runs_word} did not reach {study.target_text()}: {counts}"
    if unfinished:
        text += ("; not finished, and left out of every other finding: "
                 + ", ".join(f"{n} {status_words(status)}" for status, n in unfinished.most_common()))
    return [Finding("failures", text + ".", kind=OBSERVATION, n_seeds=study.max_seeds, numbers=numbers)]
