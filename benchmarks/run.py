"""Run every benchmark, print a table, and write results.json and RESULTS.md.

    python benchmarks/run.py                         # the full record -> benchmarks/results.json,
                                                     #   benchmarks/RESULTS.md (about 25 minutes,
                                                     #   and an hour or more for sizes)
    python benchmarks/run.py --quick                 # tiny settings, to check the scripts still
                                                     #   work (1-3 minutes); writes to a temp dir
    python benchmarks/run.py --quick --out /tmp/bench
    python benchmarks/run.py --only steering,engine --out /tmp/bench
    python benchmarks/run.py --only peers_quality --update   # hours: steering quality against
                                                     #   the peers, added to the record

The store is $EDGEEMO_HOME (default ~/.cache/edgeemo); the default model is pulled and exported
there first if it is missing. Each benchmark runs as its own process (bench_*.py --json FILE), so
one that fails or crashes is recorded and the others still run. Timings are only meaningful on an
otherwise idle machine; nothing here asserts on them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

BENCHMARKS = {      # name -> (script, section title); in the order they run
    "steering": ("bench_steering.py", "Steering overhead"),
    "latency": ("bench_latency.py", "Chat latency"),
    "engine": ("bench_engine.py", "Hidden-state extraction engine"),
    "endtoend": ("bench_endtoend.py", "End to end"),
    "stories": ("bench_stories.py", "Writing stories"),
    "peer": ("bench_peer.py", "A peer: repeng"),
    "scaling": ("bench_scaling.py", "Scaling"),
    "serve": ("bench_serve.py", "HTTP server"),
    "sizes": ("bench_sizes.py", "Model sizes"),
}
# The same scripts on the real 1.5B model (pulled and exported first if the store lacks it).
# They run only when named with --only: each takes tens of minutes.
REAL_MODEL = "qwen2.5-coder-1.5b-instruct"
AT_SIZE = {         # name -> (script, section title, settings passed before the user's --set)
    "steering-1.5b": ("bench_steering.py", "Steering overhead at 1.5B (Qwen2.5-Coder-1.5B)",
                      [f"model={REAL_MODEL}"]),
    "engine-1.5b": ("bench_engine.py", "Extraction engine at 1.5B (Qwen2.5-Coder-1.5B)",
                    [f"model={REAL_MODEL}", "texts=32", "reps=3", "memory_reps=1"]),
    "sizes-real": ("bench_sizes.py", "Real models at 135M, 0.5B and 1.5B",
                   ["random=", "texts=16"]),
}
# Hours long: run only when named with --only (--set model=... for another model).
LONG = {            # name -> (script, section title, settings passed before the user's --set)
    "peers_quality": ("bench_peers_quality.py",
                      "Steering quality against the peers (llama.cpp cvector-generator, repeng)",
                      []),
}
ONLY_WHEN_NAMED = {**AT_SIZE, **LONG}


def title_of(name: str) -> str:
    return (BENCHMARKS.get(name) or ONLY_WHEN_NAMED[name])[1]


def run_one(name: str, args, out_dir: Path) -> dict:
    script, title, *preset = BENCHMARKS.get(name) or ONLY_WHEN_NAMED[name]
    json_path = out_dir / f"{name}.json"
    json_path.unlink(missing_ok=True)
    command = [sys.executable, str(benchlib.HERE / script), "--threads", str(args.threads),
               "--json", str(json_path)] + (["--quick"] if args.quick else []) \
        + [x for kv in [*(preset[0] if preset else []), *(args.set or [])] for x in ("--set", kv)]
    started = time.perf_counter()
    try:
        # the child's table goes to our stdout; its progress to our stderr
        proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=args.timeout)
        returncode, output = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        returncode, output = None, f"timed out after {exc.timeout:.0f} s"
    seconds = round(time.perf_counter() - started, 1)
    if json_path.is_file():
        result = json.loads(json_path.read_text())
        json_path.unlink()
    else:
        result = {"name": name, "title": title, "status": "failed", "quick": args.quick,
                  "settings": {}, "rows": [], "notes": [], "skipped": [], "data": {},
                  "errors": [{"part": "whole benchmark",
                              "error": f"exit code {returncode}: {output.strip()[-2000:]}",
                              "traceback": ""}]}
    result["seconds"] = seconds
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="Tiny settings; every code path runs, the numbers mean nothing.")
    parser.add_argument("--out", help="Directory for results.json and RESULTS.md (default: "
                                      "benchmarks/, or a new temp directory with --quick).")
    parser.add_argument("--only", help=f"Comma-separated subset of: {', '.join(BENCHMARKS)}; or, "
                                       f"only when named, at real size: {', '.join(AT_SIZE)}; "
                                       f"hours long: {', '.join(LONG)}.")
    parser.add_argument("--threads", type=int, default=benchlib.default_threads(),
                        help="CPU threads for every engine (default: all cores).")
    parser.add_argument("--note", help="A sentence on the conditions of the run (e.g. other work "
                                       "on the machine), printed under the header of RESULTS.md.")
    parser.add_argument("--render", action="store_true",
                        help="Only rewrite RESULTS.md from the results.json already in the output "
                             "directory (with --note, replacing its note); measure nothing.")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="Passed to each benchmark run (e.g. --only steering --set reps=21).")
    parser.add_argument("--update", action="store_true",
                        help="Run only the --only benchmarks and replace them in the results.json "
                             "already in the output directory (the rerun is recorded).")
    parser.add_argument("--timeout", type=float, default=None,
                        help="Seconds after which one benchmark is stopped (default: none; "
                             "900 with --quick).")
    args = parser.parse_args()
    if args.quick and args.timeout is None:
        args.timeout = 900
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS and n not in ONLY_WHEN_NAMED]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from "
                     f"{', '.join([*BENCHMARKS, *ONLY_WHEN_NAMED])}")
    if args.out:
        out_dir = Path(args.out)
    elif args.quick:
        out_dir = Path(tempfile.mkdtemp(prefix="edgeemo-bench-quick-"))
    else:
        out_dir = benchlib.HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.render:
        return render(out_dir, args.note)
    if args.update and not (args.only and (out_dir / "results.json").is_file()):
        parser.error("--update needs --only and a results.json in the output directory")

    started = time.perf_counter()
    record = {"quick": args.quick, "command": " ".join(["python", "benchmarks/run.py"] + sys.argv[1:]),
              "machine": benchlib.machine(args.threads), "benchmarks": {}, "note": args.note}
    record["machine"]["load_average_start"] = benchlib.load_average()
    record["machine"]["process_floor_mb"] = benchlib.baseline_memory_mb()
    try:
        record["prepare"] = benchlib.prepare(benchlib.DEFAULT_MODEL, ("fp32", "int8"))
    except benchlib.SkipPart as exc:
        record["prepare"] = {"skipped": str(exc)}
        benchlib.say(f"could not prepare the default model: {exc}")
    for name in names:
        benchlib.say(f"running {name}")
        record["benchmarks"][name] = run_one(name, args, out_dir)
        print(benchlib.format_rows(record["benchmarks"][name]), flush=True)
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["machine"]["load_average_end"] = benchlib.load_average()
    record["machine"]["versions"]["repeng"] = benchlib.package_version("repeng")

    seconds = record["seconds"]
    if args.update:
        record = update(json.loads((out_dir / "results.json").read_text()), record)
    (out_dir / "results.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (out_dir / "RESULTS.md").write_text(markdown(record))
    failed = [n for n, r in record["benchmarks"].items() if r["status"] in ("failed", "partial")]
    print(f"\n{len(names)} benchmarks in {seconds:.0f} s"
          + (f"; with failures: {', '.join(failed)}" if failed else "")
          + f"\nwrote {out_dir / 'results.json'} and {out_dir / 'RESULTS.md'}")
    return 0


def update(record: dict, rerun: dict) -> dict:
    """``record`` with the benchmarks of ``rerun`` replaced, and the rerun listed in "reruns"."""
    record["benchmarks"].update(rerun["benchmarks"])
    record.setdefault("reruns", []).append({
        "benchmarks": list(rerun["benchmarks"]), "command": rerun["command"],
        "date": rerun["machine"]["date"], "threads": rerun["machine"]["threads"],
        "load_average": [rerun["machine"].get("load_average_start"),
                         rerun["machine"].get("load_average_end")],
        "note": rerun.get("note")})
    return record


def render(out_dir: Path, note: str | None) -> int:
    path = out_dir / "results.json"
    if not path.is_file():
        sys.exit(f"no {path} to render: run the benchmarks first")
    record = json.loads(path.read_text())
    if note is not None:
        record["note"] = note
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    (out_dir / "RESULTS.md").write_text(markdown(record))
    print(f"wrote {out_dir / 'RESULTS.md'}")
    return 0


# --- RESULTS.md ---------------------------------------------------------------------------------

def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(record: dict) -> str:
    m = record["machine"]
    kind = "quick check (tiny settings: the numbers mean nothing)" if record["quick"] else "full run"
    lines = ["# edgeemo benchmarks", "",
             f"`{record['command']}`: {kind}, {record['seconds'] / 60:.1f} minutes, {m['date']}.",
             "How each number is measured: [README.md](README.md). Raw data: `results.json`.", ""]
    if record.get("note"):
        lines += [f"Conditions: {record['note']}", ""]
    for rerun in record.get("reruns", []):
        load = "/".join("–" if x is None else f"{x:.2f}" for x in rerun["load_average"])
        lines += [f"Rerun later: {', '.join(rerun['benchmarks'])} (`{rerun['command']}`, "
                  f"{rerun['date']}, {rerun['threads']} thread(s), load average {load})"
                  + (f": {rerun['note']}" if rerun.get("note") else "."), ""]
    load = [m.get(k) for k in ("load_average_start", "load_average_end")]
    lines += [
             "## Machine", "", "| | |", "|---|---|",
             f"| CPU | {cell(m['cpu'])} |", f"| cores | {m['cores']} |",
             f"| threads used | {m['threads']} |", f"| memory | {m['memory_gb']} GB |",
             f"| OS | {cell(m['os'])} |",
             f"| load average (1 min) at start / end | "
             f"{' / '.join('–' if x is None else f'{x:.2f}' for x in load)} |",
             f"| floor of a measured process | {m.get('process_floor_mb')} MB (an empty Python child) |"]
    lines += [f"| {name} | {version or 'not installed'} |" for name, version in m["versions"].items()]
    lines += [f"| date | {m['date']} |", ""]
    prepare = record.get("prepare", {})
    if prepare.get("made"):
        made = [f"the {m} export" if m != "gguf" else "the GGUF" for m in prepare["made"]]
        lines += [f"Before the benchmarks the store lacked {', '.join(made)} of the default model; "
                  f"making them took {prepare['seconds']:.0f} s (not part of any number below).",
                  ""]
    elif prepare.get("skipped"):
        lines += [f"The default model could not be prepared: {cell(prepare['skipped'])}.", ""]

    lines += ["## Summary", "", "| benchmark | measure | result | aim |", "|---|---|---|---|"]
    for name, result in record["benchmarks"].items():
        for r in result["rows"]:
            if r.get("headline"):
                lines.append(f"| {title_of(name)} | {cell(r['metric'])} | "
                             f"{benchlib.format_value(r['value'], r['unit'])} | {cell(r['aim'])} |")
    lines.append("")
    for i, (name, result) in enumerate(record["benchmarks"].items(), 1):
        lines += [f"## {i}. {title_of(name)}", "",
                  f"Status: **{result['status']}**, {result['seconds']:.0f} s. Settings: "
                  + ", ".join(f"{k}={cell(v)}" for k, v in result["settings"].items()
                              if k != "messages") + ".", ""]
        if result["rows"]:
            lines += ["| measure | result | aim | note |", "|---|---|---|---|"]
            lines += [f"| {cell(r['metric'])} | {benchlib.format_value(r['value'], r['unit'])} | "
                      f"{cell(r['aim'])} | {cell(r['note'])} |" for r in result["rows"]]
            lines.append("")
        lines += [f"- Note: {cell(n)}" for n in result["notes"]]
        lines += [f"- Skipped {cell(s['part'])}: {cell(s['reason'])}" for s in result["skipped"]]
        lines += [f"- **Failed** {cell(e['part'])}: {cell(e['error'].splitlines()[0])}"
                  for e in result["errors"]]
        if result["notes"] or result["skipped"] or result["errors"]:
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
