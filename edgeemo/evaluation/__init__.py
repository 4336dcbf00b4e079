"""Steering evaluation: did a vector move the tone, and did the text survive?

    prompts.py      which prompts are judged, and the calibration set
    evaluate.py     replies, unsteered and steered, over seeds (``evaluate``, ``rejudge``)
    summary.py      the aggregates, what a chat user meets, 95% intervals over prompts
    judgebase.py    what a judge is (``Judge``, ``ScoredJudge``, ``chance_margin``)
    judges.py       who says the emotion moved: one class per judge, registered in ``JUDGES``
    llmjudge.py     the LLM judge: a chat model of another family names each reply's tone
    regimes.py      surgical, repetitive or explosive; language drift
    report.py       result.json, report.md and plots of a finished result
    calibration.py  the strength to recommend per vector, written into the file

Needs the ``eval`` extra (lexicons, statistics, plots): ``pip install 'edgeemo[eval]'``.
"""
