"""An OpenAI-compatible HTTP server for steered chat: ``edgeemo serve`` (needs the serve extra).

    from edgeemo.serve import create_app
    app = create_app("smollm2-135m-instruct", parallel=2)    # then: uvicorn.run(app)

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    reply = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Hi!"}],
        extra_body={"emotion": "afraid"})          # or "joy:0.06,calm:0.03", or {"afraid": 0.08}
    print(reply.choices[0].message.content, reply.model_extra["emotion"])

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (streamed as server-sent
events, or not), ``GET /v1/models``, ``GET /v1/emotions``, ``POST /v1/probe`` (needs the model's
ONNX export) and ``GET /health``. ``emotion`` and ``steer_prompt`` mean what ``--emotion`` and
``--steer-prompt`` mean in ``edgeemo generate``: only the reply is steered unless ``steer_prompt``
is true. A client that cannot send ``emotion`` names it in the model: ``"<model>:afraid"`` or
``"<model>:afraid:0.06"``. The request fields and what each does are in ``serve/schema.py``.

Isolation. The server holds ``parallel`` workers, each an :class:`~edgeemo.steer.EmotionModel`
with its own llama.cpp context (its own control vector and KV cache) and its own thread. A request
takes an idle worker, sets its steering (``steer(mix)`` or ``clear()``, which also drops the
worker's cached prompt, so a reply never depends on the request before it) and generates; then the
worker goes back to the pool. With ``prompt_cache`` the worker keeps the part of its cache the new
steering can use (``keep_cache=True``): the prompt read unsteered, and an earlier reply only if it
was steered as this one is; ``usage.prompt_tokens_details.cached_tokens`` says how much was
reused, and a request whose prompt extends the conversation a worker holds (a chat's next turn)
goes to that worker (see :class:`WorkerPool` for when it waits for it). Requests beyond
``parallel`` wait in a queue of ``queue_size``; when that is full the answer is 503. llama.cpp
maps the GGUF file into memory, so the workers share one copy of the weights (the page cache);
each worker adds its KV cache and compute buffers (about 75 MB for SmolLM2-135M at n_ctx 2048).

Disconnects. Each request has a stop flag, set when the client goes away (the ASGI server's
``http.disconnect``) or when a stream is closed; the worker checks it between tokens, so at most
one more token is computed before the worker is free again. A client that leaves while waiting in
the queue gives up its place. The probe waits in the same queue and holds a worker while it reads.

Limits. A reply is cut (finish_reason "length") at the request's ``max_tokens``, at the server's
``max_tokens_limit``, where the context is full, or when its generation has taken ``time_limit``
seconds; only a prompt that leaves no room in the context is a 400.

Browsers. ``cors_origins`` lists the origins whose pages may call the server; their preflight
requests are answered before the API key is checked (they never carry it).

Modules: ``app.py`` (the FastAPI app: settings, routes, error handlers, the API-key and body-size
guard), ``schema.py`` (request bodies, their fields, errors), ``pool.py`` (workers, queue, routing),
``job.py`` (one completion on a worker), ``replies.py`` (OpenAI-shaped answers and stream chunks).

Errors are OpenAI-style JSON, ``{"error": {"message", "type", "param", "code"}}``: an EdgeemoError
(a bad emotion, strength or prompt) is a 400; anything unexpected is a 500 whose details stay in
the server's log.
"""

from .app import create_app, is_loopback

__all__ = ["create_app", "is_loopback"]
