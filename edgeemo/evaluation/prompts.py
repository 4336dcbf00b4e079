"""The prompts an evaluation judges: scenarios or requests by count or id, and the calibration set.

Calibration is made on :data:`CALIBRATION_REQUESTS`; ``evaluate`` judges the other, held-out
requests (:func:`prompt_sets`), so a strength is never chosen on the prompts it is judged on.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import stimuli
from ..errors import EdgeemoError


def select_scenarios(spec: int | str | Sequence[str] | None = None, *,
                     exclude: Sequence[str] = (), pool: str = "scenarios") -> list[dict]:
    """Scenarios by count or by id, from ``pool``: "scenarios" (steering scenarios: statements,
    openings, conversation, story starts) or "requests" (everyday requests to an assistant).

    ``None``: all of them. An int N (or "N"): N scenarios taken round-robin over the kinds in file
    order (4 -> one neutral, one opposite, one conversational, one story). A comma-separated string
    or list of ids: those, in the order given. Scenarios whose ids are in ``exclude`` are left out.
    """
    if pool not in ("scenarios", "requests"):
        raise EdgeemoError(f"unknown prompt set '{pool}': choose scenarios or requests")
    rows = stimuli.requests() if pool == "requests" else stimuli.scenarios()
    every = [s for s in rows if s["id"] not in set(exclude)]
    if spec is None:
        return every
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec)
    if isinstance(spec, int):
        if spec < 1:
            raise EdgeemoError(f"the number of scenarios must be at least 1, not {spec}")
        by_kind: dict[str, list[dict]] = {}
        for s in every:
            by_kind.setdefault(s["kind"], []).append(s)
        picked, depth = [], 0
        while len(picked) < min(spec, len(every)):
            for rows in by_kind.values():
                if depth < len(rows) and len(picked) < spec:
                    picked.append(rows[depth])
            depth += 1
        return picked
    ids = [x.strip() for x in (spec.split(",") if isinstance(spec, str) else spec) if x.strip()]
    known = {s["id"]: s for s in every}
    missing = [i for i in ids if i not in known]
    if missing or not ids:
        raise EdgeemoError(f"unknown scenario id(s) {', '.join(missing) or '(none given)'}: ids "
                           f"are {every[0]['id']}-{every[-1]['id']}, or give a number of scenarios")
    return [known[i] for i in ids]


# The everyday requests calibration uses (two per kind), never judged by an evaluation: the
# shipped vectors' strengths were chosen on these (records/calibration-dialogue.json).
CALIBRATION_REQUESTS = ("r05", "r08", "r10", "r14", "r16", "r17", "r18", "r20")
CALIBRATION_SCENARIOS = 8         # for the "scenarios" pool: that many, spread over the kinds


def calibration_prompts(pool: str = "requests") -> list[dict]:
    """The prompts calibration is made on: :data:`CALIBRATION_REQUESTS`, or for the older
    "scenarios" pool :data:`CALIBRATION_SCENARIOS` scenarios."""
    if pool == "requests":
        return select_scenarios(list(CALIBRATION_REQUESTS), pool="requests")
    return select_scenarios(CALIBRATION_SCENARIOS, pool=pool)


def prompt_sets(spec: str = "held-out", margin_spec: str = "calibration", *,
                pool: str = "requests") -> tuple[list[dict], list[dict]]:
    """The prompts to judge and the prompts the judges' margins are measured on.

    ``spec``: "held-out" (the 12 everyday requests calibration never sees; for the "scenarios"
    pool, the calibration scenarios' count of others), "all", a number or ids
    (:func:`select_scenarios`). ``margin_spec``: "calibration" (the calibration requests that are
    not judged; none left: the judged prompts' own chance replies give the margins), "judged"
    (those chance replies), or ids.
    """
    calibration = calibration_prompts("requests")
    spec, margin_spec = spec.strip(), margin_spec.strip()
    if spec == "held-out":
        used = [s["id"] for s in calibration_prompts(pool)]
        scenarios = select_scenarios(None if pool == "requests" else CALIBRATION_SCENARIOS,
                                     exclude=used, pool=pool)
    else:
        scenarios = select_scenarios(None if spec == "all" else spec, pool=pool)
    judged = {s["id"] for s in scenarios}
    if margin_spec == "judged":
        return scenarios, []
    if margin_spec == "calibration":
        return scenarios, [s for s in calibration if s["id"] not in judged]
    return scenarios, select_scenarios(margin_spec, pool=pool)
