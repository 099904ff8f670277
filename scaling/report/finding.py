"""A conclusion: the sentence the report shows and the record findings.json holds, built from one object.

A finding function takes the Study and returns `Finding`s. Each Finding carries the sentence the report shows
(`statement`) and the record `findings.json` holds (`id`, `decided`, `winner`, `n_seeds`, `numbers`), built
from the same object, so the two cannot disagree. A question's section shows the findings that answer it
(`answers`); the Conclusions show them all except per-batch details (`detail=True`), which their summaries
stand for. Each question module (scaling/report/questions/) writes its own finding functions; FINDINGS
(findings.py) lists them in the Conclusions' order.

`decided` is true only when the data separate the alternatives: the difference exceeds run-to-run variation at
the study's confidence and the practical threshold (scaling.stats). Otherwise the sentence says the study
cannot tell them apart and, where it can estimate it, how many seeds would. The helpers below word that the
same way for every question.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scaling import stats
from scaling.report import formatting as fmt
from scaling.report.render import Block, Bullets, Note
from scaling.report.runs import Configuration
from scaling.report.study import Study

COMPARISON = "comparison"  # two or more alternatives judged against each other
ESTIMATE = "estimate"  # a quantity with its uncertainty (critical batch size)
OBSERVATION = "observation"  # what happened (counts, ranges): decides nothing, so `decided` is false

# At most this many configurations are named where the data cannot tell several apart.
MAX_NAMED = 3


@dataclass
class Finding:
    id: str  # a stable name per question: "fastest", "lr_rule@512", "largest_useful_batch[sqrt]"
    statement: str  # the sentence in the report
    decided: bool = False
    winner: str | None = None  # the configuration or option judged better (or the answer), when decided
    n_seeds: int | None = None  # the fewest seeds per configuration the finding rests on
    kind: str = COMPARISON
    numbers: dict[str, Any] = field(default_factory=dict)
    detail: bool = False  # shown in its section and findings.json, summarised in the Conclusions

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "statement": self.statement, "decided": self.decided,
                "winner": self.winner if self.decided else None, "n_seeds": self.n_seeds, "numbers": self.numbers}


FindingFunction = Callable[[Study], list[Finding]]


def answers(found: list[Finding], missing: str) -> list[Block]:
    """A section's answers: its findings' sentences as bullets, or a Note saying why there are none."""
    sentences = [finding.statement for finding in found]
    return [Bullets(sentences)] if sentences else [Note(missing)]


# --- wording shared by the questions' sentences -------------------------------------------------------------


def prefix(series: str, count: int) -> str:
    """`linear: ` when sentences are per series and there are several of them."""
    return f"{series}: " if count > 1 and series != "all" else ""


def suffix(series: str) -> str:
    """`[linear]` in an id, for per-series questions in a study with series."""
    return "" if series == "all" else f"[{series}]"


def named(configuration: Configuration) -> str:
    series = "" if configuration.series == "all" else f" ({configuration.series})"
    return f"global batch {configuration.global_bs}{series}"


def sentence(lead: str, text: str) -> str:
    """`linear: text.` after a series name, else `Text.`"""
    return lead + (text if lead else text[0].upper() + text[1:]) + "."


def one_seed(study: Study) -> str:
    """With one seed everywhere the Conclusions say why once (findings.notes); elsewhere each sentence does."""
    return "not decided" if study.one_seed else "one seed per configuration: not decided"


def hardest(comparisons: list[stats.Comparison]) -> stats.Comparison | None:
    """The open comparison that needs the most seeds (one needing more than any practical number first), so
    that the seeds a sentence asks for resolve all of them; an equivalent one only when none is open."""
    if not comparisons:
        return None
    return max(comparisons, key=lambda c: (c.verdict == stats.UNDECIDED, c.seeds_needed is None,
                                           c.seeds_needed or 0))


def verdict_text(study: Study, comparison: stats.Comparison | None, n_seeds: int) -> str:
    """Why a comparison is not decided, what its seeds can resolve and how many would resolve the threshold."""
    if n_seeds < 2 or comparison is None or comparison.reason == "one seed":
        return one_seed(study)
    if comparison.verdict == stats.EQUIVALENT:
        return (f"no practical difference (within ±{fmt.percent(study.rules.threshold, 0)} at "
                f"{fmt.confidence(comparison.confidence)} confidence)")
    return "not decided; " + fmt.seeds_advice(comparison, study.rules)


def status_words(status: str) -> str:
    """`not_reached` -> `not reached`, `oom` -> `out of memory`."""
    return {"oom": "out of memory"}.get(status, status.replace("_", " "))
