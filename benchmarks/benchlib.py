"""Shared pieces of the benchmarks: reports, isolated stages, peak memory, timing, stores.

Not run on its own; every ``bench_*.py`` imports it. Conventions:

* A benchmark builds a :class:`Report`. Each independent part runs inside ``with report.part(name):``
  so that a failure is recorded (with its traceback) and the next part still runs.
* A stage whose memory we report runs in a fresh interpreter (:func:`isolated`, multiprocessing
  "spawn"); its peak is the child's own resident-set high-water mark.
* Timings that are compared are taken in one process, interleaved (A, B, A, B, …), and reported as
  medians and ratios of medians.

Peak memory: on Linux we read ``VmHWM`` from ``/proc/self/status`` in the child. ``ru_maxrss``
from ``getrusage(RUSAGE_SELF)`` is recorded too, but Linux carries the parent's resident size at
fork time into a spawned child's ``ru_maxrss`` (the high-water mark of the address space replaced by
exec is kept), so it overstates a child started from a large parent; ``VmHWM`` belongs to the new
address space only. Where ``/proc`` is missing, ``ru_maxrss`` is all there is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_MODEL = "smollm2-135m-instruct"


# --- reports ------------------------------------------------------------------------------------

class Report:
    """What one benchmark found: settings, table rows, raw data, skipped parts and failures."""

    def __init__(self, name: str, title: str, *, quick: bool, settings: dict):
        self.name, self.title, self.quick = name, title, quick
        self.settings = dict(settings)
        self.rows: list[dict] = []
        self.data: dict = {}
        self.skipped: list[dict] = []
        self.errors: list[dict] = []
        self.notes: list[str] = []
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def part(self, name: str):
        """Run a part of the benchmark; an exception is recorded and does not escape."""
        say(f"[{self.name}] {name}")
        try:
            yield
        except SkipPart as skip:
            self.skip(name, str(skip))
        except Exception as exc:                                   # noqa: BLE001 (recorded)
            message = f"{type(exc).__name__}: {exc}".strip()
            say(f"[{self.name}] {name} FAILED: {message.splitlines()[0]}")
            self.errors.append({"part": name, "error": message,
                                "traceback": traceback.format_exc()})

    def row(self, metric: str, value, unit: str = "", *, aim: str = "", note: str = "",
            headline: bool | None = None) -> None:
        """One line of the results table. ``value`` is a number, a string or None. Headline rows
        (by default, those with an aim) are repeated in the summary at the top of RESULTS.md."""
        if isinstance(value, float):
            value = float(f"{value:.4g}")
        self.rows.append({"metric": metric, "value": value, "unit": unit, "aim": aim, "note": note,
                          "headline": bool(aim) if headline is None else headline})

    def skip(self, part: str, reason: str) -> None:
        say(f"[{self.name}] {part} skipped: {reason}")
        self.skipped.append({"part": part, "reason": reason})

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def status(self) -> str:
        if self.errors:
            return "partial" if self.rows else "failed"
        if not self.rows:
            return "skipped"
        return "ok"

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "status": self.status, "quick": self.quick,
                "seconds": round(time.perf_counter() - self.started, 1),
                "settings": self.settings, "rows": self.rows, "notes": self.notes,
                "skipped": self.skipped, "errors": self.errors, "data": self.data}


class SkipPart(Exception):
    """Raised inside ``report.part`` to record the part as skipped with a reason."""


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- numbers ------------------------------------------------------------------------------------

def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def rounded(value, digits: int = 3):
    """Round floats (also inside lists and dicts) for JSON; other values pass through."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    return value


def interleaved(runs: dict, reps: int, *, pause: float = 0.0) -> dict[str, list]:
    """Call each of ``runs`` (name -> callable returning a measurement) once per repetition, in
    turn (A, B, C, A, B, C, …), rotating which goes first so no one always follows the same
    neighbour. Returns name -> list of measurements."""
    names = list(runs)
    out: dict[str, list] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            if pause:
                time.sleep(pause)          # let the previous engine's spinning threads park
            out[name].append(runs[name]())
    return out


# --- peak memory and isolated stages ------------------------------------------------------------

def peak_memory_mb() -> dict:
    """This process's peak resident set: ``VmHWM`` (Linux) and ``ru_maxrss``, in MB."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    maxrss_mb = maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024
    hwm = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return {"peak_mb": round(hwm if hwm is not None else maxrss_mb, 1),
            "source": "VmHWM" if hwm is not None else "ru_maxrss",
            "ru_maxrss_mb": round(maxrss_mb, 1)}


def _child(conn, fn, args, kwargs, env):
    os.environ.update(env)
    # if memory runs out, the kernel kills the measured stage first, not other work on the machine
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")
    started = time.perf_counter()
    try:
        value = fn(*args, **kwargs)
        conn.send({"ok": True, "value": value, "memory": peak_memory_mb(),
                   "seconds": time.perf_counter() - started})
    except BaseException as exc:                                   # noqa: BLE001 (sent back)
        conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc(), "memory": peak_memory_mb()})
    finally:
        conn.close()


class StageFailed(RuntimeError):
    """A stage that raised, crashed or timed out. ``peak_mb``: the child's peak memory, as it
    reported it, or as last read from outside (once a second) if it died; None if unknown."""

    def __init__(self, message: str, peak_mb: float | None = None):
        super().__init__(message)
        self.peak_mb = peak_mb


def _watched_peak_mb(pid: int) -> float | None:
    """``VmHWM`` of another (live) process in MB, read from /proc; None where that is missing."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def isolated(fn, *args, env: dict | None = None, timeout: float | None = None, **kwargs) -> dict:
    """Run ``fn(*args, **kwargs)`` in a fresh interpreter and return
    ``{"value", "peak_mb", "memory", "seconds" (inside the child), "wall" (including start-up)}``.

    ``env`` is set in the child before ``fn`` runs (``EDGEEMO_HOME`` for a fresh store).
    ``fn`` must be importable (a module-level function). Raises StageFailed on an exception in
    the child, on a crash (e.g. killed when memory ran out), or after ``timeout`` seconds (the
    child is then terminated); its ``peak_mb`` says how much memory the child had reached.
    """
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(sender, fn, args, kwargs, dict(env or {})))
    started = time.perf_counter()
    child.start()
    sender.close()
    result = None
    seen_mb = None                      # the child's peak as read from outside, once a second
    try:
        while not receiver.poll(1.0):   # a result, or the end of the pipe when the child died
            seen_mb = _watched_peak_mb(child.pid) or seen_mb
            if timeout is not None and time.perf_counter() - started > timeout:
                child.terminate()
                child.join(10)
                raise StageFailed(f"{fn.__name__} did not finish within {timeout:.0f} s",
                                  seen_mb)
        with contextlib.suppress(EOFError):
            result = receiver.recv()
    finally:
        receiver.close()
    child.join()
    wall = time.perf_counter() - started
    if result is None:
        killed = " (SIGKILL: the kernel does that when memory runs out)" \
            if child.exitcode == -9 else ""
        raise StageFailed(f"{fn.__name__} died without a result (exit code {child.exitcode})"
                          f"{killed}", seen_mb)
    if not result["ok"]:
        last = result["traceback"].strip().splitlines()[-3:]
        raise StageFailed(f"{fn.__name__} failed in its subprocess: {result['error']}\n"
                          + "\n".join(last), result["memory"]["peak_mb"])
    return {"value": result["value"], "peak_mb": result["memory"]["peak_mb"],
            "memory": result["memory"], "seconds": result["seconds"], "wall": wall}


def _noop() -> None:
    return None


def baseline_memory_mb() -> float:
    """Peak memory of an isolated child that does nothing: the floor under every stage's peak."""
    return isolated(_noop)["peak_mb"]


# --- machine ------------------------------------------------------------------------------------

def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine(threads: int) -> dict:
    """CPU, cores, threads used, memory, OS and the versions of everything measured."""
    memory_gb = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    versions = {"python": platform.python_version()}
    for label, dist in (("numpy", "numpy"), ("onnxruntime", "onnxruntime"),
                        ("llama-cpp-python", "llama_cpp_python"), ("torch", "torch"),
                        ("transformers", "transformers"), ("optimum-onnx", "optimum-onnx"),
                        ("edgeemo", "edgeemo"), ("repeng", "repeng")):
        versions[label] = package_version(dist)
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads,
            "memory_gb": memory_gb, "os": platform.platform(), "versions": versions,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "store": os.environ.get("EDGEEMO_HOME", "(default)")}


def load_average() -> float | None:
    """The machine's 1-minute load average (how busy it was with other work), or None."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def default_threads() -> int:
    return os.cpu_count() or 1


# --- the store: models and exports -------------------------------------------------------------

def _prepare(name: str, precisions: tuple[str, ...]) -> dict:
    from edgeemo import export, models

    model = models.ensure(name)
    dirs = {p: str(export.export_model(model, p)) for p in precisions}
    return {"gguf": str(model.path), "exports": dirs}


def prepare(name: str = DEFAULT_MODEL, precisions: tuple[str, ...] = ("fp32",), *,
            allow_pull: bool = True, allow_export: bool = True) -> dict:
    """The model's GGUF path and export directories, pulling and exporting what is missing.

    The work is done in a subprocess (an export loads torch); raises SkipPart with the reason
    when something is missing and may not be made, or cannot be made (no export extra).
    Returns ``{"gguf", "exports": {precision: dir}, "made": [what was done], "seconds"}``.
    """
    from edgeemo import export, models

    model = models.resolve(name)
    if model.present:
        missing = [p for p in precisions if export.cached_export(model, p) is None]
    else:
        missing = ["gguf", *precisions]
    if not missing:
        return {"gguf": str(model.path),
                "exports": {p: str(export.cached_export(model, p)) for p in precisions},
                "made": [], "seconds": 0.0}
    if "gguf" in missing and not allow_pull:
        raise SkipPart(f"{name} is not in the store ({model.path})")
    if [m for m in missing if m != "gguf"] and not allow_export:
        raise SkipPart(f"{name} has no {'/'.join(missing)} export in the store; "
                       f"run `edgeemo export-model {name}`")
    if precisions:
        try:
            export.require_export_extra()
        except Exception as exc:                                   # noqa: BLE001
            raise SkipPart(f"cannot export {name}: {exc}") from None
    say(f"preparing {name}: making {', '.join(missing)} (a one-time cost per store)")
    try:
        done = isolated(_prepare, name, tuple(precisions), env=store_env())
    except StageFailed as exc:
        raise SkipPart(f"could not prepare {name}: {str(exc).splitlines()[0]}") from None
    return {**done["value"], "made": missing, "seconds": round(done["wall"], 1)}


def store_env() -> dict:
    return {"EDGEEMO_HOME": os.environ["EDGEEMO_HOME"]} if "EDGEEMO_HOME" in os.environ else {}


def fresh_store(name: str, *, gguf: str | Path, exports: dict[str, str | Path] | None = None) -> Path:
    """A new temporary store that holds only ``name``'s GGUF (and the given export directories),
    as symlinks, so nothing else (stories, activations, vectors) is cached."""
    from edgeemo import models

    home = Path(tempfile.mkdtemp(prefix="edgeemo-bench-store-"))
    model = models.resolve(name)
    (home / "models").mkdir()
    (home / "models" / Path(model.path).name).symlink_to(Path(gguf).resolve())
    for precision, directory in (exports or {}).items():
        target = home / "exports" / Path(directory).parent.name / precision
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(Path(directory).resolve(), target_is_directory=True)
    return home


# --- running a benchmark on its own -------------------------------------------------------------

def settings_for(full: dict, quick_overrides: dict, quick: bool, overrides: list[str]) -> dict:
    """Full settings, or the quick ones, with ``KEY=VALUE`` overrides from the command line."""
    settings = {**full, **(quick_overrides if quick else {})}
    for item in overrides or []:
        key, _, raw = item.partition("=")
        if key not in settings:
            raise SystemExit(f"unknown setting {key!r}; known: {', '.join(settings)}")
        settings[key] = parse_value(raw)
    return settings


def numbers(value) -> list[int]:
    """A list setting of whole numbers as given in FULL ([2, 4]) or with --set (4, or "2,4")."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        return [int(x) for x in value.split(",") if x.strip()]
    return [int(x) for x in value]


def parse_value(raw: str):
    for cast in (int, float):
        with contextlib.suppress(ValueError):
            return cast(raw)
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if raw.lower() == "none":
        return None
    return raw


def main(run, doc: str) -> None:
    """The command line of a single benchmark: ``--quick``, ``--threads``, ``--set K=V``, ``--json``."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Tiny settings, to check it runs.")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="CPU threads for every engine (default: all cores).")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="Override one setting (repeatable).")
    parser.add_argument("--json", dest="json_path", help="Also write the result to this file.")
    args = parser.parse_args()
    started = time.perf_counter()
    result = run(quick=args.quick, threads=args.threads, overrides=args.overrides)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(format_rows(result))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2, default=str) + "\n")


def format_value(value, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def format_rows(result: dict) -> str:
    """A plain-text table of one benchmark's rows, skipped parts and failures."""
    lines = [f"== {result['title']} [{result['status']}]"]
    width = max([len(r["metric"]) for r in result["rows"]] + [10])
    for r in result["rows"]:
        aim = f"  (aim {r['aim']})" if r["aim"] else ""
        lines.append(f"  {r['metric']:<{width}}  {format_value(r['value'], r['unit'])}{aim}")
    for s in result["skipped"]:
        lines.append(f"  skipped {s['part']}: {s['reason']}")
    for e in result["errors"]:
        lines.append(f"  FAILED {e['part']}: {e['error'].splitlines()[0]}")
    return "\n".join(lines)
