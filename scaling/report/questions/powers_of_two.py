"""Does a power of two matter? Each power-of-two batch (global, then per-device) against the batch sizes
within 5% of it (127/128/129, 500/512) that share every other setting, on per-seed throughput: the
comparisons, their finding and this question's section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from scaling import stats
from scaling.report import formatting as fmt
from scaling.report.aggregates import min_seeds, stat, throughputs
from scaling.report.finding import Finding, answers, hardest, verdict_text
from scaling.report.render import Block, Heading, Note, Table
from scaling.report.runs import BATCH_KEYS, RUN_ONLY_KEYS, Configuration
from scaling.report.study import Study, per_study

QUESTION = "Does a power of two matter?"

# Batch sizes within this relative distance of a power of two count as its neighbours (127/128/129, 500/512).
NEIGHBOUR_TOLERANCE = 0.05


def is_power_of_two(value: int | None) -> bool:
    return isinstance(value, int) and value > 1 and value & (value - 1) == 0


@dataclass
class PowerComparison:
    """A power-of-two batch against its neighbours (every other setting equal), on per-seed throughput."""

    key: str  # "global", "per-device", or "global (= per-device)" when both are the same number
    power: int
    configuration: Configuration
    neighbours: dict[int, Configuration]
    comparisons: dict[int, stats.Comparison]  # neighbour -> power's throughput over the neighbour's

    @property
    def n_seeds(self) -> int:
        return min_seeds([self.configuration, *self.neighbours.values()])

    @property
    def verdict(self) -> str:
        """HIGHER: the power of two is faster than every neighbour; LOWER: slower than every one; EQUIVALENT:
        within the threshold of every one; else UNDECIDED."""
        verdicts = {c.verdict for c in self.comparisons.values()}
        return verdicts.pop() if len(verdicts) == 1 else stats.UNDECIDED

    @property
    def decided(self) -> bool:
        return self.verdict in (stats.HIGHER, stats.LOWER)


def _context(configuration: Configuration) -> str:
    """Everything but the batch: two configurations compare fairly when this is equal."""
    settings = {k: v for k, v in configuration.settings.items() if k not in BATCH_KEYS + RUN_ONLY_KEYS}
    return json.dumps(settings, sort_keys=True, default=str)


def power_of_two_comparisons(configurations: list[Configuration], rules: stats.Rules) -> list[PowerComparison]:
    """Each power-of-two batch (global, then per-device) against the non-powers within 5% of it that share
    every other setting; each neighbour comparison at the Bonferroni-corrected confidence."""
    out: list[PowerComparison] = []
    seen: set[tuple[int, int]] = set()
    rated = [c for c in configurations if throughputs(c)]
    for key, size in (("global", lambda c: c.global_bs), ("per-device", lambda c: c.per_device_bs)):
        for power in rated:
            if not is_power_of_two(size(power)):
                continue
            neighbours = {}
            for other in rated:
                value = size(other)
                if (value is None or is_power_of_two(value) or value == size(power)
                        or abs(value - size(power)) > NEIGHBOUR_TOLERANCE * size(power)
                        or _context(other) != _context(power) or (id(power), id(other)) in seen):
                    continue
                seen.add((id(power), id(other)))
                neighbours[value] = other
            if not neighbours:
                continue
            # power over neighbour: HIGHER means the power of two has the higher throughput.
            comparisons = {value: stats.compare(throughputs(power), throughputs(other), rules, comparisons=len(neighbours))
                           for value, other in sorted(neighbours.items())}
            same = power.global_bs == power.per_device_bs and all(
                other.global_bs == other.per_device_bs for other in neighbours.values())
            out.append(PowerComparison("global (= per-device)" if same else key, size(power), power,
                                       dict(sorted(neighbours.items())), comparisons))
    return out


@per_study
def comparisons_of(study: Study) -> list[PowerComparison]:
    return power_of_two_comparisons(study.configurations, study.rules)


# --- finding and section ------------------------------------------------------------------------------------


def power_of_two(study: Study) -> list[Finding]:
    out = []
    for p in comparisons_of(study):
        if p.key.startswith("global"):
            fid, where = f"powers_of_two@{p.power}", ""
            name = {n: str(n) for n in p.neighbours}
        else:  # per-device: the global batches differ too, so they are named
            fid = f"powers_of_two@per_device={p.power}/global={p.configuration.global_bs}"
            where = f" (global {p.configuration.global_bs})"
            name = {n: f"{n} (global {c.global_bs})" for n, c in p.neighbours.items()}
        neighbours = fmt.batch_list([name[n] for n in p.neighbours])
        parts = [f"against {name[n]}, {fmt.change(c, 'throughput', interval=p.n_seeds >= 2)}"
                 for n, c in p.comparisons.items()]
        lead = f"Power of two: {p.key} batch {p.power}{where} against {neighbours}"
        if p.verdict == stats.HIGHER:
            text, winner = f"{lead}: the power of two is faster than every neighbour ({'; '.join(parts)})", str(p.power)
        elif p.verdict == stats.LOWER:
            text, winner = f"{lead}: the power of two is slower than every neighbour ({'; '.join(parts)})", neighbours
        else:
            undecided = [c for c in p.comparisons.values() if c.verdict == stats.UNDECIDED]
            worst = hardest(undecided) or next(iter(p.comparisons.values()))
            if p.verdict == stats.EQUIVALENT:
                verdict = verdict_text(study, worst, p.n_seeds)
            elif any(c.decided for c in p.comparisons.values()):
                verdict = ("it does not differ the same way from every neighbour, so being a power of two is not "
                           "what matters; not decided")
            else:
                verdict = verdict_text(study, worst, p.n_seeds)
            text, winner = f"{lead}: {'; '.join(parts)}: {verdict}", None
        numbers = {"key": p.key, "power": p.power,
                   "against": {str(n): c.to_dict() for n, c in p.comparisons.items()}}
        out.append(Finding(fid, text + ".", p.decided, winner, p.n_seeds, numbers=numbers))
    return out


def section(study: Study) -> list[Block]:
    blocks: list[Block] = [Heading(QUESTION)]
    comparisons = comparisons_of(study)
    if not comparisons:
        return blocks + [Note(f"No power-of-two batch has a neighbour within {NEIGHBOUR_TOLERANCE:.0%} "
                              f"(e.g. 127/128/129, 500/512) with otherwise equal settings: nothing to compare.")]
    verdicts = {stats.HIGHER: "power faster", stats.LOWER: "power slower", stats.EQUIVALENT: "no practical difference",
                stats.UNDECIDED: "cannot tell"}
    rows = []
    for p in comparisons:
        for neighbour, c in p.comparisons.items():
            power_rate = stat(run.throughput for run in p.configuration.runs)
            other_rate = stat(run.throughput for run in p.neighbours[neighbour].runs)
            interval = (f"{fmt.signed_percent(c.low - 1)} to {fmt.signed_percent(c.high - 1)} "
                        f"({fmt.confidence(c.confidence)})" if c.low is not None else "— (one seed)")
            rows.append([p.key, str(p.power), str(neighbour), fmt.mean_std(power_rate.mean, power_rate.std, fmt.integer),
                         fmt.mean_std(other_rate.mean, other_rate.std, fmt.integer),
                         fmt.signed_percent(c.ratio - 1) if c.ratio is not None else fmt.DASH, interval,
                         f"{c.n_a} / {c.n_b}", verdicts[c.verdict]])
    blocks.append(Table(["batch", "power of two", "neighbour", "throughput (samples/s)", "neighbour throughput",
                         "difference", "confidence interval", "seeds", "verdict"], rows))
    blocks.append(Note(
        "Difference: the power of two's throughput over the neighbour's, minus 1 (ratio of geometric means over "
        "seeds), with its Welch t interval over seeds, Bonferroni-corrected over a power's neighbours. It counts "
        f"when the whole interval lies beyond ±{fmt.percent(study.rules.threshold, 0)}; a power of two matters "
        "only when it is faster (or slower) than every neighbour. The spread of logging windows inside one run "
        "is not run-to-run variation, so one seed decides nothing."
    ))
    return blocks + answers(power_of_two(study), "No comparison could be made.")
