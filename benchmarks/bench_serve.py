"""The HTTP server: throughput, latency and time to first token under concurrent clients.

    python benchmarks/bench_serve.py                    # 1, 4, 8 clients; --parallel 1 and 2
    python benchmarks/bench_serve.py --quick            # 1 and 2 clients, 4 tokens
    python benchmarks/bench_serve.py --set max_tokens=64 --set per_client=3
    python benchmarks/bench_serve.py --quick --set turns=10 --set max_tokens=32   # a short run
    python benchmarks/bench_serve.py --quick --set parts=load      # only the multi-client chats

``edgeemo serve`` runs as its own process on a free loopback port (the default model, one
llama.cpp thread per worker unless --threads gives more to share out), once with ``--parallel 1``
and once with ``--parallel 2``. For each number of clients, steered (afraid, its calibrated
strength) and unsteered in turn, every client sends ``per_client`` streamed chat completions one
after the other (greedy, ``max_tokens`` tokens, a short chat turn), all clients starting together.
Reported per cell: requests/s (requests over the wall time of the cell), median and 95th
percentile latency (request to ``[DONE]``) and median time to first token (request to the first
chunk with text). The server's memory is read from /proc after its load: resident set, and the
proportional set size (PSS), which counts pages of the GGUF that several workers map only once.

Multi-turn chat: one client holds a ``turns``-turn conversation (steered, greedy, ``max_tokens``
tokens a reply, each turn sending the whole conversation so far) with a one-worker server, once
without and once with ``--prompt-cache``; reported: the time to first token of the last turn, and
the prompt tokens the server found cached (``usage.prompt_tokens_details.cached_tokens``).

Load with multi-turn clients: for each number in ``load_clients``, that many clients at once,
each holding a ``load_turns``-turn chat with an emotion of its own (``load_emotions``), against
``--parallel 2``, once without and once with ``--prompt-cache`` (whose requests are routed to the
worker holding their chat); reported: the median time to first token of the turns after the
first, the prompt tokens found cached, and how many turns ran on their chat's worker (with more
chats than workers, a chat whose worker is busy for longer than ``--route-wait`` moves). No
steering may leak between requests: without the cache, every reply must equal the reply of a
one-worker server to which each chat is sent alone, one after the other, with the same messages;
with it, every reply (and its cached count) must equal the reply of a one-worker server with the
cache that reads the requests of the worker that answered it (``X-Edgeemo-Worker``), in that
worker's order: the same cache states, without the other worker running beside it.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import benchlib

FULL = {"model": benchlib.DEFAULT_MODEL, "parallel": [1, 2], "clients": [1, 4, 8],
        "per_client": 2, "max_tokens": 32, "emotion": "afraid",
        "messages": [{"role": "system", "content": "You are a friendly assistant."},
                     {"role": "user", "content": "Hi! How was your day?"}],
        "turns": 10, "load_clients": [2, 4], "load_turns": 5,
        "load_emotions": ["afraid", "happy", "sad", "calm"],
        "parts": "throughput,chat,load"}       # which parts run
QUICK = {"clients": [1, 2], "per_client": 1, "max_tokens": 4, "turns": 3, "load_clients": [2],
         "load_turns": 3}
# what the user says in turn 2, 3, ... of the multi-turn chat (turn 1 is ``messages``)
FOLLOW_UPS = ["What did you have for breakfast?", "Tell me more about that.", "Why?",
              "What happened next?", "How did that make you feel?", "And then?",
              "What would you do differently?", "Who else was there?", "How did it end?",
              "What will you do tomorrow?"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(model: str, parallel: int, threads: int, clients: int, *options: str):
    """``edgeemo serve`` in a subprocess; yields (base url, pid) once /health answers."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "edgeemo", "serve", model, "--port", str(port),
               "--parallel", str(parallel), "--threads", str(threads),
               "--queue", str(max(16, clients)), *options]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"edgeemo serve exited: {proc.stderr.read()[-1000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("edgeemo serve did not answer /health within 120 s")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def memory_mb(pid: int) -> dict:
    """Resident set (VmRSS, RssAnon, RssFile) and proportional set size of a process, in MB."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) / 1024
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1]) / 1024
    return out


def one_request(http, url: str, body: dict) -> dict:
    """One streamed completion: latency, time to first text, status, text and usage, the worker
    that answered and when it began (its response's headers come once the worker starts)."""
    started = time.perf_counter()
    first, text, counted = None, "", None
    with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return {"status": response.status_code, "latency": None, "first": None}
        worker, began = response.headers.get("x-edgeemo-worker"), time.perf_counter()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            doc = json.loads(line[6:])
            counted = doc.get("usage") or counted
            piece = "".join(c["delta"].get("content") or "" for c in doc["choices"])
            if first is None and piece:
                first = time.perf_counter() - started
            text += piece
    return {"status": 200, "latency": time.perf_counter() - started, "first": first,
            "text": text, "usage": counted, "worker": worker, "began": began, "body": body}


def chat_turns(url: str, settings: dict, emotion: str, turns: int,
               replies: list[str] | None = None) -> list[dict]:
    """One conversation of ``turns`` turns, each sending all of it so far; one result a turn.
    With ``replies``, the conversation goes on with those (another run's) instead of its own."""
    import httpx

    messages, results = list(settings["messages"]), []
    with httpx.Client(timeout=600) as http:
        for turn in range(turns):
            if turn:
                messages.append({"role": "user",
                                 "content": FOLLOW_UPS[(turn - 1) % len(FOLLOW_UPS)]})
            result = one_request(http, url, {
                "messages": list(messages), "max_tokens": settings["max_tokens"], "temperature": 0,
                "seed": 0, "stream": True, "stream_options": {"include_usage": True},
                "emotion": emotion})
            if result["status"] != 200:
                raise RuntimeError(f"turn {turn + 1} failed with {result['status']}")
            results.append(result)
            messages.append({"role": "assistant",
                             "content": result["text"] if replies is None else replies[turn]})
    return results


def load_chats(url: str, settings: dict) -> list[list[dict]]:
    """``load_clients`` chats at once, client i steered by the i-th of ``load_emotions``."""
    emotions = settings["load_emotions"]
    chats: dict[int, list[dict]] = {}
    start = threading.Barrier(settings["load_clients"])

    def client(i):
        start.wait()
        chats[i] = chat_turns(url, settings, emotions[i % len(emotions)], settings["load_turns"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(start.parties)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [chats[i] for i in range(len(threads))]


def cached(result: dict) -> int:
    return result["usage"]["prompt_tokens_details"]["cached_tokens"]


def replayed(url: str, settings: dict, chats: list[list[dict]]) -> list[list[dict]]:
    """Each chat again, alone, one after the other, sending the same messages as before."""
    emotions = settings["load_emotions"]
    return [chat_turns(url, settings, emotions[i % len(emotions)], len(chat),
                       replies=[r["text"] for r in chat]) for i, chat in enumerate(chats)]


def by_worker(chats: list[list[dict]]) -> dict[str, list[dict]]:
    """The requests of a load run per worker (``X-Edgeemo-Worker``), in the order it ran them."""
    runs: dict[str, list[dict]] = {}
    for result in sorted((r for chat in chats for r in chat), key=lambda r: r["began"]):
        runs.setdefault(result["worker"], []).append(result)
    return runs


def worker_replayed(model: str, sequence: list[dict]) -> list[dict]:
    """One worker's requests again, in its order, on a fresh one-worker server with the prompt
    cache, one at a time: its cache goes through the same states as in the load run, so every
    reply must be the same unless a request running on the other worker at the same time (its
    steering, its cache) changed it."""
    import httpx

    with server(model, 1, 1, 1, "--prompt-cache") as (url, _), httpx.Client(timeout=600) as http:
        return [one_request(http, url, r["body"]) for r in sequence]


def cell(url: str, clients: int, per_client: int, body: dict) -> dict:
    """``clients`` clients at once, each sending ``per_client`` requests in turn."""
    import httpx

    results: list[dict] = []
    start = threading.Barrier(clients + 1)

    def client():
        with httpx.Client(timeout=600) as http:
            start.wait()
            for _ in range(per_client):
                results.append(one_request(http, url, body))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ok = [r for r in results if r["status"] == 200]
    latencies = sorted(r["latency"] for r in ok)
    return {"requests": len(results), "failed": len(results) - len(ok), "wall_s": wall,
            "requests_per_s": len(ok) / wall if wall else None,
            "latency_p50_s": benchlib.median(latencies),
            "latency_p95_s": percentile(latencies, 95),
            "first_token_p50_s": benchlib.median(r["first"] for r in ok)}


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile by linear interpolation between closest ranks."""
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def load(report: benchlib.Report, settings: dict, clients: int) -> None:
    """``clients`` multi-turn chats at once on two workers, without and with the prompt cache,
    then the check that no steering leaks between requests: without the cache, every reply is
    the one a one-worker server gives each chat alone; with it, every reply is the one a
    one-worker server gives when it reads the same requests in the same order as the worker
    that answered it (the same cache states; a chat that moved to another worker finds less
    cached there, and its reply may differ from the chat alone where two tokens are nearly tied)."""
    turns = settings["load_turns"]
    settings = {**settings, "load_clients": clients}
    checked, equal, differ = 0, 0, []
    for label, options in (("without the prompt cache", ()),
                           ("with --prompt-cache", ("--prompt-cache",))):
        with report.part(f"load, {clients} multi-turn clients, {label}"):
            with server(settings["model"], 2, 1, clients, *options) as (url, _):
                started = time.perf_counter()
                chats = load_chats(url, settings)
                wall = time.perf_counter() - started
            later = [r for chat in chats for r in chat[1:]]
            found = sum(cached(r) for r in later)
            read = sum(r["usage"]["prompt_tokens"] for r in later)
            moved = sum(a["worker"] != b["worker"] for chat in chats for a, b in zip(chat, chat[1:]))
            report.row(f"load, {clients} clients x {turns} turns, --parallel 2, {label}: "
                       f"time to first token p50 (turns 2-{turns})",
                       1000 * benchlib.median(r["first"] for r in later), "ms", headline=True,
                       note=f"{found} of {read} prompt tokens of those turns found cached; "
                            f"{len(later) - moved} of {len(later)} turns on the worker of the turn "
                            f"before; {clients * turns} requests in {wall:.1f} s; "
                            f"{settings['max_tokens']}-token replies, greedy")
            # the references: each chat alone, or each worker's requests in its order
            if options:
                pairs = [(a, b) for sequence in by_worker(chats).values()
                         for a, b in zip(sequence, worker_replayed(settings["model"], sequence))]
            else:
                with server(settings["model"], 1, 1, 1) as (url, _):
                    alone = replayed(url, settings, chats)
                pairs = [(a, b) for chat, ref in zip(chats, alone) for a, b in zip(chat, ref)]
            for a, b in pairs:
                checked += 1
                if a["text"] == b["text"] and cached(a) == cached(b):
                    equal += 1
                else:
                    differ.append({"run": label, "messages": len(a["body"]["messages"]),
                                   "emotion": a["body"]["emotion"], "reply": a["text"],
                                   "replayed": b["text"], "cached": [cached(a), cached(b)]})
    with report.part(f"load, {clients} clients: no steering leaks between requests"):
        report.data[f"load_{clients}_differ"] = differ
        report.row(f"load, {clients} clients: replies equal to the same requests replayed alone",
                   f"{equal} of {checked}", aim="all",
                   note="without the cache each chat alone; with it each worker's requests in "
                        "its order on a one-worker server (same cached count too)")
        report.data[f"load_{clients}_replies_equal"] = {"equal": equal, "checked": checked}
        if equal != checked:
            raise RuntimeError(f"{checked - equal} replies differ from the same requests alone")


def run(quick: bool = False, threads: int | None = None,
        overrides: list[str] | None = None) -> dict:
    settings = benchlib.settings_for(FULL, QUICK, quick, overrides)
    threads = threads or benchlib.default_threads()
    report = benchlib.Report("serve", "HTTP server: throughput and latency", quick=quick,
                             settings={**settings, "threads": threads})
    try:
        import fastapi  # noqa: F401
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        with report.part("serve"):
            raise benchlib.SkipPart(f"needs the serve extra and httpx ({exc.name} is missing): "
                                    f"pip install -e '.[serve,test]'")
        return report.to_dict()
    report.note(f"load average at start: {benchlib.load_average()}")
    body = {"messages": settings["messages"], "max_tokens": settings["max_tokens"],
            "temperature": 0, "seed": 0, "stream": True}
    kinds = {"unsteered": body, "steered": {**body, "emotion": settings["emotion"]}}
    parts = settings["parts"].split(",")
    cells = {}
    if "throughput" in parts:
        for parallel in settings["parallel"]:
            per_worker = max(1, threads // parallel)
            with report.part(f"--parallel {parallel}"):
                with server(settings["model"], parallel, per_worker, max(settings["clients"])) \
                        as (url, pid):
                    import httpx

                    with httpx.Client(timeout=600) as http:             # untimed warm-up
                        one_request(http, url, kinds["steered"])
                        one_request(http, url, kinds["unsteered"])
                    for i, clients in enumerate(settings["clients"]):
                        order = list(kinds) if i % 2 == 0 else list(kinds)[::-1]
                        for kind in order:
                            result = cell(url, clients, settings["per_client"], kinds[kind])
                            cells[f"parallel={parallel} clients={clients} {kind}"] = result
                            benchlib.say(f"[serve] parallel {parallel}, {clients} clients, {kind}: "
                                         f"{result['requests_per_s']:.2f} req/s")
                    memory = memory_mb(pid)
                report.data[f"memory_parallel_{parallel}_mb"] = benchlib.rounded(memory, 1)
                for clients in settings["clients"]:
                    for kind in kinds:
                        r = cells[f"parallel={parallel} clients={clients} {kind}"]
                        ms = {k: None if r[k] is None else 1000 * r[k]
                              for k in ("latency_p50_s", "latency_p95_s", "first_token_p50_s")}
                        most = clients == max(settings["clients"])
                        report.row(f"--parallel {parallel}, {clients} client{'s' * (clients > 1)}, "
                                   f"{kind}: throughput", r["requests_per_s"], "req/s",
                                   headline=most and kind == "steered",
                                   note=f"latency p50 {ms['latency_p50_s']:.0f} ms, p95 "
                                        f"{ms['latency_p95_s']:.0f} ms; first token p50 "
                                        f"{ms['first_token_p50_s']:.0f} ms; "
                                        f"{r['requests']} requests"
                                        + (f", {r['failed']} failed" if r["failed"] else ""))
                report.row(f"--parallel {parallel}: server memory (PSS)", memory.get("Pss"), "MB",
                           headline=True,
                           note=f"resident {memory.get('VmRSS', 0):.0f} MB, of which mapped from "
                                f"files {memory.get('RssFile', 0):.0f} MB (the GGUF, counted once "
                                f"per worker in RSS, once in PSS) and anonymous "
                                f"{memory.get('RssAnon', 0):.0f} MB")
    report.data["cells"] = benchlib.rounded(cells, 4)
    if "chat" in parts:
        chats = {}
        for label, options in (("without the prompt cache", ()),
                               ("with --prompt-cache", ("--prompt-cache",))):
            with report.part(f"multi-turn chat, {label}"):
                with server(settings["model"], 1, threads, 1, *options) as (url, _):
                    chats[label] = chat_turns(url, settings, settings["emotion"],
                                              settings["turns"])
                last = chats[label][-1]
                found = last["usage"]["prompt_tokens_details"]["cached_tokens"]
                report.row(f"multi-turn chat, turn {settings['turns']}, {label}: "
                           f"time to first token", 1000 * last["first"], "ms", headline=True,
                           note=f"{last['usage']['prompt_tokens']} prompt tokens, {found} found "
                                f"cached; {settings['max_tokens']}-token replies, steered")
        report.data["chat_turns"] = {label: [benchlib.rounded(
            {"first_token_s": r["first"], "latency_s": r["latency"],
             "prompt_tokens": r["usage"]["prompt_tokens"],
             "cached_tokens": r["usage"]["prompt_tokens_details"]["cached_tokens"]}, 4)
            for r in results] for label, results in chats.items()}
        with contextlib.suppress(KeyError, IndexError):
            same = sum(a["text"] == b["text"] for a, b in zip(chats["without the prompt cache"],
                                                              chats["with --prompt-cache"]))
            report.data["chat_same_replies"] = same
            report.note(f"multi-turn chat: {same} of {settings['turns']} replies the same with and "
                        f"without the cache (with it, an earlier reply steered as the next one is "
                        f"kept as it was generated, steered, as in `edgeemo chat`; without it, the "
                        f"whole conversation is read unsteered)")
    if "load" in parts:
        for clients in benchlib.numbers(settings["load_clients"]):
            load(report, settings, clients)
    for clients in settings["clients"]:
        with contextlib.suppress(KeyError, TypeError):
            steered = cells[f"parallel=1 clients={clients} steered"]["requests_per_s"]
            plain = cells[f"parallel=1 clients={clients} unsteered"]["requests_per_s"]
            report.data[f"steered_over_unsteered_clients_{clients}"] = round(steered / plain, 3)
    report.note(f"load average at end: {benchlib.load_average()}; {threads} thread(s) shared out "
                f"among the workers (at least one each)")
    return report.to_dict()


if __name__ == "__main__":
    benchlib.main(run, __doc__)
