"""Compare evaluations: python -m transmed.compare RUN_OR_EVAL_DIR ... [--json-out FILE]

Prints a table of the evaluations (a run folder stands for all its eval-* folders) and, for every
two on the same studies, a paired DeLong test of their AUC difference per task or class.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from transmed.cli import run_main
from transmed.engine.utils import write_json
from transmed.evaluation.compare import compare, format_comparison
from transmed.evaluation.metrics import to_jsonable


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="RUN_OR_EVAL_DIR")
    parser.add_argument("--json-out", default=None, help="also write the table and tests as JSON")
    args = parser.parse_args(argv)
    result = compare(args.paths)
    if args.json_out:
        write_json(args.json_out, to_jsonable({**result, "table": result["table"].to_dict(orient="records")}))
    print(format_comparison(result))


if __name__ == "__main__":
    run_main(main)
