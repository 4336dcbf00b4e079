"""Judge the replies of recorded evaluations again, with more judges, without generating again.

    python scripts/rejudge.py records/chat-prebuilt --judges tone-smollm2,tone-gemma3

Reads each DIR/result.json that ``edgeemo evaluate --report DIR`` wrote, adds the judges' scores
and verdicts (margins measured on the record's own unsteered replies, as ``evaluate`` does), and
writes the report again in place (result.json, report.md, plots).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    from edgeemo.evaluation.evaluate import add_judges, chat_summary, write_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument("--judges", required=True, help="comma-separated judge names")
    args = parser.parse_args()
    for directory in args.directories:
        result = json.loads((directory / "result.json").read_text())
        add_judges(result, args.judges.split(","))
        write_report(result, directory)
        chat = chat_summary(result)
        for judge in args.judges.split(","):
            ident = chat["identification"].get(judge, {}).get("top1")
            print(f"{directory}: {judge}: moved {chat['moved'][judge]}, success "
                  f"{chat['success'][judge]}, identification {ident}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
