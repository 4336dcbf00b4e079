"""The LLM judge: an instruction-tuned chat model reads a reply's text and says which emotion its
tone expresses, the way a person reading the chat would.

    from edgeemo.evaluation.llmjudge import LLMJudge
    judge = LLMJudge(steered_model)                # picks a judge model that is not steered_model
    judge.read(["I'm terrified, but here is the recipe..."])[0]["afraid"]   # a log-probability

The judge model (:data:`JUDGE_MODELS`, first one that is not the steered model itself) is asked, in
its own chat template, to answer with one word from the 20 emotions and "neutral". Nothing is
sampled: one forward pass per text, and the next-token logits at the labels' first tokens, put
through a softmax over the 21 labels, give a probability for each. The instructions and the label
list come before the text, so that prefix is evaluated once and every text reuses its cache; more
generally, whatever a prompt shares with the one before (the same request, the same first reply
of a pair) is not read again, and the questions are asked in the order that shares most. The
judge reads prompts at about 50 tokens/s on two cores (the 1.5B), so tokens not read are time.

It reads text only, never hidden states, and shares no data with any vector: it is an
independent judge of every extraction method. Its verdict on a steered reply is the change of
the target's log-probability against the unsteered reply to the same request; the margin that
change must pass is measured from pairs of unsteered replies (``evaluate``'s margin pairs).

``on_task`` asks the same model whether a reply answers its request (yes or no), read the same
way: ``P(yes)``. ``preferred`` shows it the unsteered and the steered reply to one request and
asks which sounds more like the target emotion (A or B), in both orders to cancel its leaning
toward a position: ``P(steered)`` is the mean of the two.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .. import _llama, check, models
from ..emotions import EMOTIONS
from ..errors import EdgeemoError
from ..chatformat import prompt_ids
from .judgebase import ScoredJudge

LABELS: tuple[str, ...] = (*EMOTIONS, "neutral")
# Judge models, best first; the first one that is not the steered model itself is used. Both are
# offline cards (PyPI). Qwen2.5-Coder-1.5B reads tone clearly better than the 0.5B (records/
# judge-ceiling-llm.json); for a steered 1.5B the 0.5B, of the same family, is the judge left.
JUDGE_MODELS: tuple[str, ...] = ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct")

SYSTEM = "You are a careful reader who rates the emotional tone of short texts."
ASK_TONE = ("Read the assistant's reply below and decide which emotion its tone expresses. "
            "Judge the tone and wording, not the topic.\n"
            "Answer with exactly one word from this list: " + ", ".join(LABELS) + ".\n\n"
            "Reply:\n\"\"\"\n")
ASK_TONE_END = "\n\"\"\"\nThe one word:"   # short: it is read again for every reply
ASK_TASK = ("Below are a request to an assistant and the assistant's reply. Does the reply "
            "respond to the request (it may be in any tone or style)? Answer yes or no.\n\n")
ASK_TASK_END = "\n\nDoes the reply respond to the request? Answer yes or no."
ASK_PAIR = ("Below are a request to an assistant and two replies to it, A and B. Compare their "
            "tone and wording, not their content.\n\n")
ASK_PAIR_END = "\n\nWhich reply sounds more {emotion}? Answer A or B."
PAIR_ANSWER = "Reply"
N_CTX = 1024
MAX_TEXT_TOKENS = 400          # a longer text is cut (replies in an evaluation are ~60 tokens)


class LLMJudge(ScoredJudge):
    """Label log-probabilities from a chat model of another family (see the module doc).

    ``scores`` hold every label's log-probability (the 20 emotions and neutral), so identification
    among the replies to one request works as for the readers; its first choice among the 20 is
    ``summary.first_choice``.
    """

    name = "llm"
    chance_margin = True
    judge_models: ClassVar[tuple[str, ...]] = JUDGE_MODELS
    _loaded: ClassVar[dict] = {}          # judge model path -> its reader (loaded once a process)

    def __init__(self, model=None, emotions=(), *, judge_model: str | None = None,
                 threads: int | None = None, ask_on_task: bool = False,
                 ask_preferred: bool = False):
        self.model, self.emotions = model, list(emotions)
        self.ask_on_task = ask_on_task        # evaluate() also asks it whether replies are on task
        self.ask_preferred = ask_preferred    # ... and which of two replies sounds more the target
        self.judge_model = pick_judge_model(model, judge_model or None, self.judge_models)
        key = str(self.judge_model.path)
        if key not in self._loaded:
            self._loaded[key] = _LabelReader(self.judge_model, threads=threads)
        self.reader = self._loaded[key]

    @classmethod
    def release(cls) -> None:
        """Free the judge models this process loaded (they are kept between evaluations, as a
        1.5B judge takes seconds to load; a long-lived program calls this when it is done)."""
        for reader in cls._loaded.values():
            _llama.close(reader.llm)
        cls._loaded.clear()

    @property
    def description(self) -> str:
        same = (self.model is not None and self.model.card is not None
                and self.judge_model.card is not None
                and self.model.card.family == self.judge_model.card.family)
        return f"{self.judge_model.name}{' (same family as the steered model)' if same else ''}"

    def read(self, texts):
        return [None if not t.strip() else self.reader.tone(t) for t in texts]

    def on_task(self, requests: list[str], texts: list[str]) -> list[float]:
        """``P(yes)`` that each reply responds to its request (0 for an empty reply). The replies
        to one request are asked about in a row, so the request is read once for all of them."""
        out = [0.0] * len(texts)
        for i in sorted((i for i, t in enumerate(texts) if t.strip()), key=lambda i: requests[i]):
            out[i] = self.reader.answers(requests[i], texts[i])
        return out

    def preferred(self, requests: list[str], steered: list[str], plain: list[str],
                  emotions: list[str]) -> list[float]:
        """``P(steered)``: that each steered reply sounds more like its emotion than the plain
        reply to the same request, averaged over both orders (0 for an empty steered reply).
        Pairs that begin alike are asked about in a row: with the steered reply shown first, the
        request is read once per request; with the plain reply first, request and plain reply
        are read once for all the steered replies compared with it."""
        live = [i for i, t in enumerate(steered) if t.strip()]
        first = {i: self.reader.prefers(requests[i], steered[i], plain[i], emotions[i])
                 for i in sorted(live, key=lambda i: requests[i])}
        second = {i: self.reader.prefers(requests[i], plain[i], steered[i], emotions[i])
                  for i in sorted(live, key=lambda i: (requests[i], plain[i]))}
        return [(first[i] + 1.0 - second[i]) / 2 if i in first else 0.0
                for i in range(len(steered))]


def pick_judge_model(steered, wanted: str | None = None,
                     candidates: tuple[str, ...] = JUDGE_MODELS, *, say=None) -> models.Model:
    """The judge model: ``wanted`` if given (never the steered model itself), else the first of
    ``candidates`` that is not the steered model. Pulled into the store if it is not there
    (``say(message)`` hears about the download)."""
    steered_sha = None
    if steered is not None:
        steered_sha = steered.sha256 if isinstance(steered, models.Model) else None
    names = [wanted] if wanted else list(candidates)
    for name in names:
        model = models.resolve(name)
        known = bool(model.card is not None and model.card.sha256) or model.present
        if steered_sha is not None and known and model.sha256 == steered_sha:
            if wanted:
                raise EdgeemoError(f"the judge model {name} is the steered model itself: a model "
                                   f"cannot judge its own steering; choose another judge model")
            continue
        return models.ensure(name, say=say)
    raise EdgeemoError("no judge model is left that is not the steered model itself")


class _LabelReader:
    """A judge model in llama.cpp with its two prompts' prefixes evaluated once each."""

    def __init__(self, model: models.Model, *, threads: int | None = None):
        self.model = model
        self.llm = check.load(model, threads=threads or _threads(), n_ctx=N_CTX)
        if not _llama.chat_template(self.llm):
            raise EdgeemoError(f"{model.name} has no chat template: the LLM judge needs an "
                               f"instruction-tuned model")
        self.label_tokens = first_tokens(self.llm, LABELS)
        self.yes_no = first_tokens(self.llm, ("yes", "no"))
        self.a_b = first_tokens(self.llm, (" A", " B"))     # after the prefilled "Reply"
        self._around = self._template()

    def _template(self) -> tuple[list[int], list[int]]:
        """The chat template's ids before and after the user's message (rendered once)."""
        head, tail = (prompt_ids(self.llm, [{"role": "system", "content": SYSTEM},
                                            {"role": "user", "content": mark}])
                      for mark in ("\x01", "\x02"))
        split = next(i for i, (a, b) in enumerate(zip(head, tail)) if a != b)
        return head[:split], head[split + len(self._tok("\x01")):]

    def _ids(self, ask: str, pieces: list[str], end: str) -> list[int]:
        """Token ids of the whole prompt: instructions, the pieces, the closing question."""
        before, after = self._around
        body = [t for piece in pieces for t in self._tok(piece)]
        return before + self._tok(ask) + body + self._tok(end) + after

    def _tok(self, text: str) -> list[int]:
        return _llama.tokenize(self.llm, text, bos=False)

    def _logits(self, ids: list[int]) -> np.ndarray:
        """Next-token logits after ``ids``. The leading tokens the cache holds from the prompt
        before (the instructions, the same request, the same first reply) are not read again."""
        _llama.evaluate(self.llm, ids, cached=_llama.cached_prefix(self.llm, ids, len(ids) - 1))
        return _llama.last_logits(self.llm)

    def _clip(self, text: str, limit: int = MAX_TEXT_TOKENS) -> str:
        ids = self._tok(text)
        if len(ids) <= limit:
            return text
        return _llama.detokenize(self.llm, ids[:limit]).decode("utf-8", errors="ignore")

    def tone(self, text: str) -> dict[str, float]:
        logits = self._logits(self._ids(ASK_TONE, [self._clip(text)], ASK_TONE_END))
        return label_logprobs(logits, self.label_tokens, LABELS)

    def answers(self, request: str, text: str) -> float:
        logits = self._logits(self._ids(ASK_TASK, ["Request: ", self._clip(request),
                                                   "\n\nReply: ", self._clip(text)], ASK_TASK_END))
        return float(np.exp(label_logprobs(logits, self.yes_no, ("yes", "no"))["yes"]))

    def prefers(self, request: str, a: str, b: str, emotion: str) -> float:
        """``P(A)``: that reply A sounds more ``emotion`` than reply B."""
        limit = MAX_TEXT_TOKENS // 2                    # three texts must fit in N_CTX
        pieces = ["Request: ", self._clip(request, limit), '\n\nReply A:\n"""\n',
                  self._clip(a, limit), '\n"""\n\nReply B:\n"""\n', self._clip(b, limit), '\n"""']
        ids = self._ids(ASK_PAIR, pieces, ASK_PAIR_END.format(emotion=emotion))
        logits = self._logits(ids + self._tok(PAIR_ANSWER))          # the answer begun for it
        return float(np.exp(label_logprobs(logits, self.a_b, (" A", " B"))[" A"]))


def first_tokens(llm, labels: tuple[str, ...]) -> dict[str, list[int]]:
    """Each label's first tokens, as the answer would begin ("afraid", "Afraid"); a spelling whose
    first token another label shares is left out. Raises when a label keeps none."""
    spellings = {label: {label, label.capitalize()} for label in labels}
    first = {label: {s: _llama.tokenize(llm, s, bos=False)[0]
                     for s in spellings[label]} for label in labels}
    owners: dict[int, set[str]] = {}
    for label, toks in first.items():
        for t in toks.values():
            owners.setdefault(t, set()).add(label)
    out = {label: sorted({t for t in toks.values() if owners[t] == {label}})
           for label, toks in first.items()}
    shared = [label for label, toks in out.items() if not toks]
    if shared:
        raise EdgeemoError(f"this judge model's vocabulary cannot tell {', '.join(shared)} apart "
                           f"by their first token; choose another judge model")
    return out


def label_logprobs(logits: np.ndarray, tokens: dict[str, list[int]], labels) -> dict[str, float]:
    """Log-probabilities over ``labels`` from next-token logits: each label's first tokens pooled
    (log-sum-exp), then a softmax over the labels alone."""
    raw = np.array([np.logaddexp.reduce(logits[tokens[label]].astype(np.float64))
                    for label in labels])
    raw -= np.logaddexp.reduce(raw)
    return {label: round(float(v), 4) for label, v in zip(labels, raw)}


def _threads() -> int:
    import os

    return max(1, min(4, os.cpu_count() or 1))
