"""A steered conversation: history, steering, and the in-chat commands, with no printing.

    from edgeemo import ChatSession, EmotionModel
    chat = ChatSession(EmotionModel(), emotion="fear")
    for piece in chat.reply("Hello!"):
        print(piece, end="")
    print(chat.command("/emotion joy:0.06"))      # -> "steering: happy +0.060"

Any front end (the terminal REPL in ``cli.py``, a server, an app) drives the same object: it
passes the user's lines in and shows what comes back. Turn ``n`` is sampled with ``seed + n``, so
a scripted conversation is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import EdgeemoError

HELP = ("commands: /emotion NAME[:S][,NAME:S]  /strength S  /off  /reset  /show  /help; "
        "exit, quit or Ctrl-D leave; Ctrl-C stops a reply")


def describe_mix(mix: dict[str, float]) -> str:
    """``afraid +0.080, calm -0.020``, or ``unsteered``."""
    return ", ".join(f"{name} {s:+.3f}" for name, s in mix.items()) if mix else "unsteered"


class ChatSession:
    """One conversation with a steered ``EmotionModel``."""

    def __init__(self, runtime, *, system: str | None = None, emotion=None, seed: int = 0,
                 max_tokens: int = 200, temperature: float = 0.7, probe=None):
        self.runtime, self.system, self.seed = runtime, system, seed
        self.options = {"max_tokens": max_tokens, "temperature": temperature}
        self.probe = probe                      # a probe.Probe, for readout(); optional
        self.history: list[dict] = []
        self.turn = 0
        if emotion:
            self.runtime.steer(emotion)

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def reply(self, text: str) -> Iterator[str]:
        """Yield the steered reply to ``text`` piece by piece.

        The reply joins the history when the generator ends, also when it is closed early (a
        stopped reply keeps what was said). On an error the user's turn is taken back.
        """
        if not isinstance(text, str) or not text.strip():
            raise EdgeemoError("say something: the message is empty")
        turn = {"role": "user", "content": text}
        self.history.append(turn)
        pieces: list[str] = []
        failed = False
        try:
            for piece in self.runtime.stream(self.messages(), seed=self.seed + self.turn,
                                             **self.options):
                pieces.append(piece)
                yield piece
        except EdgeemoError:
            failed = True
            self.history.remove(turn)
            raise
        finally:
            if not failed and self.history and self.history[-1] is turn:
                self.history.append({"role": "assistant", "content": "".join(pieces)})
                self.turn += 1

    @property
    def last_reply(self) -> str:
        return next((m["content"] for m in reversed(self.history) if m["role"] == "assistant"), "")

    def readout(self, top: int = 3) -> list[tuple[str, float]] | None:
        """The probe's top emotions in the last reply, or None without a probe or a reply."""
        if self.probe is None or not self.last_reply.strip():
            return None
        return self.probe.scores([self.last_reply])[0][:top]

    def command(self, line: str) -> str:
        """Run an in-chat command (``/emotion``, ``/strength``, ``/off``, ``/reset``, ``/show``,
        ``/help``) and return what to tell the user. Raises EdgeemoError for a bad command."""
        from .mix import Mix, parse_strength

        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name == "/emotion":
            if not arg:
                raise EdgeemoError("usage: /emotion NAME[:S][,NAME:S]")
            self.runtime.steer(Mix.parse(arg))
            return f"steering: {describe_mix(self.runtime.mix)}"
        if name == "/strength":
            try:
                value = parse_strength(arg)
            except EdgeemoError as exc:
                raise EdgeemoError(f"usage: /strength S: {exc}") from None
            if not self.runtime.mix:
                raise EdgeemoError("no emotion is set: use /emotion NAME first")
            self.runtime.steer({n: (value if s >= 0 else -value) for n, s in self.runtime.mix.items()})
            return f"steering: {describe_mix(self.runtime.mix)}"
        if name == "/off":
            self.runtime.clear()
            return "steering off"
        if name == "/reset":
            self.history, self.turn = [], 0
            return "conversation cleared"
        if name == "/show":
            return (f"model {self.runtime.model.name}; steering: {describe_mix(self.runtime.mix)}; "
                    f"{len(self.history) // 2} turns")
        if name == "/help":
            return HELP
        raise EdgeemoError(f"unknown command {name}; {HELP}")
