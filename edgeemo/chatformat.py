"""A conversation as the token ids a reply continues: the chat template, or a plain transcript.

Used by the steered model (``steer.py``) and by every reader of replies that needs the same ids
(``reader.py``, the llm judge, the server's checks), without loading anything itself.
"""

from __future__ import annotations

from . import _llama
from .errors import EdgeemoError


def prompt_ids(llm, messages: list[dict]) -> list[int]:
    """Token ids of a conversation, ready for the assistant's turn, for a model loaded by
    ``_llama`` (a vocabulary-only one will do).

    Instruct models use their own chat template; base models (no template) get a plain
    continuation: the text of a single message, or a User/Assistant transcript.
    """
    check_messages(messages)
    if _llama.chat_template(llm):
        return _llama.template_ids(llm, messages)
    if len(messages) == 1:
        text = messages[0]["content"]
    else:
        text = transcript(messages)
    return _llama.tokenize(llm, text, bos=True)


ROLES = ("system", "user", "assistant")


def check_messages(messages) -> None:
    """A conversation is a non-empty list of {"role": system|user|assistant, "content": str}."""
    if not isinstance(messages, list) or not messages:
        raise EdgeemoError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES \
                or not isinstance(m.get("content"), str):
            raise EdgeemoError(f"message {i} must be {{'role': one of {', '.join(ROLES)}, "
                               f"'content': a string}}, not {m!r:.80}")


def transcript(messages: list[dict]) -> str:
    """A plain User/Assistant transcript ending where the assistant speaks next."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"
