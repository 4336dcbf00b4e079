"""Steering evaluation: did a vector move the tone, and did the text survive?

    evaluate.py     replies, unsteered and steered, and the summary (``evaluate``, ``rejudge``)
    judges.py       who says the emotion moved: one class per judge, registered in ``JUDGES``
    regimes.py      surgical, repetitive or explosive; language drift
    report.py       result.json, report.md and plots of a finished result
    calibration.py  the strength to recommend per vector, written into the file

Needs the ``eval`` extra (lexicons, statistics, plots): ``pip install 'edgeemo[eval]'``.
"""
