"""Several texts at once: the numpy sampler, llama.cpp's multi-sequence context, write_many."""

from __future__ import annotations

import numpy as np
import pytest

from edgeemo import _llama, batched, extract, models
from edgeemo.errors import EdgeemoError

LOGITS = np.array([2.0, 1.0, 0.5, -1.0, -3.0])


def draws(n: int = 4000, seed: int = 0, **options) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = np.zeros(LOGITS.size)
    for _ in range(n):
        counts[batched.sample(LOGITS, [], rng, **options)] += 1
    return counts / n


def test_greedy_is_the_argmax_after_the_repetition_penalty():
    rng = np.random.default_rng(0)
    assert batched.sample(LOGITS, [], rng, temperature=0) == 0
    # token 0 seen: 2.0 / 2.5 = 0.8 falls below token 1's 1.0
    assert batched.sample(LOGITS, [0], rng, temperature=0, repeat_penalty=2.5) == 1
    # a negative logit is multiplied: the penalty never makes a seen token likelier
    assert batched.sample(np.array([-1.0, -1.5]), [0], rng, temperature=0,
                          repeat_penalty=2.0) == 1
    # only the last 64 generated tokens count
    far = [0] + [4] * batched.PENALTY_LAST_N
    assert batched.sample(LOGITS, far, rng, temperature=0, repeat_penalty=2.5) == 0


def test_draws_follow_the_softmax_and_the_filters():
    p = np.exp(LOGITS) / np.exp(LOGITS).sum()
    plain = draws(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    assert np.abs(plain - p).max() < 0.03, (plain, p)
    cool = draws(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    q = np.exp(LOGITS / 0.5) / np.exp(LOGITS / 0.5).sum()
    assert np.abs(cool - q).max() < 0.03, (cool, q)
    assert set(np.flatnonzero(draws(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0))) == {0, 1}
    # top-p 0.8: p = 0.61, 0.22, 0.14, ...: the first two reach 0.8
    assert set(np.flatnonzero(draws(temperature=1.0, top_k=0, top_p=0.8, min_p=0.0))) == {0, 1}
    # min-p 0.3: tokens at least 0.3 times as likely as the first: p1/p0 = 0.37, p2/p0 = 0.22
    assert set(np.flatnonzero(draws(temperature=1.0, top_k=0, top_p=1.0, min_p=0.3))) == {0, 1}
    # the same seed, the same draws
    assert np.array_equal(draws(200, seed=5, temperature=1.0), draws(200, seed=5, temperature=1.0))


@pytest.fixture(scope="module")
def runtime(default_gguf):
    from edgeemo.steer import EmotionModel

    model = EmotionModel(models.resolve("smollm2-135m-instruct"), threads=1)
    yield model
    model.close()


def prompts(runtime, n: int) -> list[list[int]]:
    texts = [extract.generation_prompts(e, 1)[0] for e in ("afraid", "happy", "calm", "sad")]
    return [runtime.prompt_ids([{"role": "user", "content": t}]) for t in texts[:n]]


@pytest.mark.slow
def test_each_sequence_reads_a_prompt_as_one_sequence_alone(runtime):
    """A prompt read in any place of the multi-sequence context gives exactly the logits the
    model's own context gives for it (in one shared cache, places after the first did not)."""
    first, second = prompts(runtime, 2)
    reference = []
    for ids in (first, second):
        _llama.reset(runtime.llm)
        _llama.evaluate(runtime.llm, ids)
        reference.append(_llama.last_logits(runtime.llm))
    seqs = _llama.Sequences(runtime.llm, 3, 200)
    try:
        for seq, ids, ref in [(0, first, reference[0]), (2, second, reference[1]),
                              (1, first, reference[0])]:
            seqs.forget(seq)
            out = seqs.decode([(seq, pos, t) for pos, t in enumerate(ids)], {len(ids) - 1})
            assert np.array_equal(out[len(ids) - 1], ref), seq
    finally:
        seqs.close()


@pytest.mark.slow
def test_write_many_is_seeded_bounded_and_frees_each_place(runtime):
    ps = prompts(runtime, 3)
    once = batched.write_many(runtime, ps, seeds=[1, 2, 3], max_tokens=20, temperature=0.8)
    again = batched.write_many(runtime, ps, seeds=[1, 2, 3], max_tokens=20, temperature=0.8)
    other = batched.write_many(runtime, ps, seeds=[4, 5, 6], max_tokens=20, temperature=0.8)
    assert once == again and once != other
    for ids in once:
        assert 0 < len(ids) <= 20 and not any(runtime.is_eog(t) for t in ids)
    # one place, three texts in turn: each the text it is when written alone in that place
    # (the same batch shapes), so nothing of the text before it is left in the cache
    turns = batched.write_many(runtime, ps, seeds=[0, 0, 0], max_tokens=12, temperature=0,
                               n_seq=1)
    alone = [batched.write_many(runtime, [p], seeds=[0], max_tokens=12, temperature=0)[0]
             for p in ps]
    assert turns == alone
    heard = []
    batched.write_many(runtime, ps[:2], seeds=[0, 1], max_tokens=4, temperature=0.8,
                       done=lambda i, ids: heard.append(i))
    assert sorted(heard) == [0, 1]


@pytest.mark.slow
def test_batched_stories_are_as_likely_as_stories_written_one_at_a_time(runtime):
    """The batched sampler draws from the model's distribution: its stories are as likely under
    the model as llama.cpp's own sampler's (a broken filter or temperature would not be)."""
    from edgeemo.evaluation.regimes import Scorer

    ps = prompts(runtime, 4)
    mine = batched.write_many(runtime, ps, seeds=[0, 1, 2, 3], max_tokens=40, temperature=0.8)
    theirs = [list(runtime.stream_ids(p, max_tokens=40, seed=i, temperature=0.8))
              for i, p in enumerate(ps)]
    scorer = Scorer(runtime.model.path, threads=1)

    def mean(stories):
        return float(np.mean([lp for p, ids in zip(ps, stories)
                              for lp in scorer.logprobs(p, runtime.detokenize(ids))]))

    assert abs(mean(mine) - mean(theirs)) < 0.5, (mean(mine), mean(theirs))
    assert mean(mine) > -3.0


@pytest.mark.slow
def test_write_many_writes_unsteered_text_only(runtime):
    runtime.steer({"afraid": 0.05})
    try:
        with pytest.raises(EdgeemoError, match="unsteered"):
            batched.write_many(runtime, prompts(runtime, 1), seeds=[0], max_tokens=4)
    finally:
        runtime.clear()
