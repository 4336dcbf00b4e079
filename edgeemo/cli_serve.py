"""``edgeemo serve``: the OpenAI-compatible server (``serve/``) on uvicorn."""

from __future__ import annotations

import click

from .cli_common import model_argument, say
from .errors import require


@click.command(name="serve")
@model_argument
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --api-key or --allow-remote.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--api-key", envvar="EDGEEMO_API_KEY", show_envvar=True,
              help="Require 'Authorization: Bearer KEY' on every endpoint but /health.")
@click.option("--parallel", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Requests generated at once: one llama.cpp context each (the weights are "
                   "mapped from the GGUF once and shared).")
@click.option("--queue", "queue_size", type=click.IntRange(0, 10_000), default=16,
              show_default=True, help="Requests that may wait for a worker; beyond, 503.")
@click.option("--threads", type=click.IntRange(1, 256),
              help="llama.cpp threads per worker (default: the cores shared out among workers).")
@click.option("--n-ctx", type=click.IntRange(64, 131072), default=2048, show_default=True,
              help="Context of each worker, in tokens (prompt and reply; a reply is cut "
                   "where it is full).")
@click.option("--max-tokens", type=click.IntRange(1), default=200, show_default=True,
              help="Reply length for requests that give no max_tokens.")
@click.option("--max-tokens-limit", type=click.IntRange(1),
              help="Longest reply: a request asking for more gets this many tokens at most "
                   "(finish_reason \"length\"). Default: the context's space left.")
@click.option("--time-limit", type=click.FloatRange(0, min_open=True), metavar="SECONDS",
              help="Generation time a request may take; its reply then ends there "
                   "(finish_reason \"length\"). Default: none.")
@click.option("--emotion", "-e",
              help="Steering of requests that name no emotion, e.g. afraid or joy:0.06 "
                   "(a request's \"emotion\": \"\" is unsteered).")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Let browser pages from ORIGIN call the server, e.g. http://localhost:5173 "
                   "(repeatable; '*' for any). Default: none.")
@click.option("--prompt-cache", is_flag=True,
              help="Keep each worker's cached prompt between requests: a chat's next turn reads "
                   "only its new messages (a reply may then differ from a fresh model's where "
                   "two tokens are nearly tied).")
@click.option("--route-wait", type=click.FloatRange(0), default=1.0, show_default=True,
              metavar="SECONDS",
              help="With --prompt-cache and --parallel above 1: how long a request that "
                   "extends what a busy worker is reading waits for that worker before it takes "
                   "another (which reads the conversation again).")
@click.option("--max-body", type=click.IntRange(1024), default=1_000_000, show_default=True,
              help="Largest request body in bytes (413 beyond).")
@click.option("--allow-remote", is_flag=True,
              help="Bind a non-loopback address without an API key (anyone who can reach it "
                   "can use it).")
def serve_command(model, host, port, api_key, parallel, queue_size, threads, n_ctx, max_tokens,
                  max_tokens_limit, time_limit, emotion, cors_origins, prompt_cache, route_wait,
                  max_body, allow_remote):
    """An OpenAI-compatible server for steered chat (needs the serve extra).

    \b
    Examples:
      edgeemo serve                                   # http://127.0.0.1:8000/v1
      edgeemo serve --parallel 2 --api-key "$KEY"
      edgeemo serve --emotion calm --cors-origin http://localhost:5173
      curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "Hi!"}], "emotion": "afraid"}'

    Endpoints: POST /v1/chat/completions and /v1/completions (with "emotion": a name,
    "joy:0.06,calm:0.03" or {"afraid": 0.08}, or "model": "MODEL:afraid"; "steer_prompt": true
    steers the prompt too), GET /v1/models, GET /v1/emotions, POST /v1/probe, GET /health.
    """
    from .serve.app import is_loopback

    require("serve", "fastapi", "uvicorn")
    if not is_loopback(host):
        if not api_key and not allow_remote:
            raise click.UsageError(f"binding {host} lets anyone who can reach this machine use "
                                   f"the server: add --api-key KEY, or --allow-remote if you "
                                   f"mean it")
        if not api_key:
            click.echo(f"Warning: serving on {host} with no API key: anyone who can reach this "
                       f"machine can use it", err=True)
        else:
            click.echo("Note: the API key travels in plain HTTP; put TLS in front of the server "
                       "on an untrusted network", err=True)

    import uvicorn

    from .serve.app import create_app

    say(f"loading {parallel} worker{'s' if parallel > 1 else ''}")
    app = create_app(model, parallel=parallel, queue_size=queue_size, api_key=api_key,
                     threads=threads, n_ctx=n_ctx, max_body=max_body, max_tokens=max_tokens,
                     max_tokens_limit=max_tokens_limit, time_limit=time_limit,
                     cors_origins=cors_origins, emotion=emotion, prompt_cache=prompt_cache,
                     route_wait=route_wait)
    shown = f"[{host}]" if ":" in host else host
    say(f"serving {app.state.model.name} at http://{shown}:{port}/v1 (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
