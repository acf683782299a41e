"""Compare evaluations: transmed compare RUN_OR_EVAL_DIR ... [--json-out FILE]

Prints a table of the evaluations (a run folder stands for all its eval-* folders) and, for every
two on the same studies, a paired DeLong test of their AUC difference per task or class.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..core.io import write_json
from ._common import parser_for


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    parser = parser_for(__doc__, prog)
    parser.add_argument("paths", nargs="+", metavar="RUN_OR_EVAL_DIR")
    parser.add_argument("--json-out", default=None, help="also write the table and tests as JSON")
    args = parser.parse_args(argv)

    from ..evaluation.comparison import compare, format_comparison  # after the arguments are parsed
    from ..evaluation.metrics import to_jsonable

    result = compare(args.paths)
    if args.json_out:
        write_json(args.json_out, to_jsonable({**result, "table": result["table"].to_dict(orient="records")}))
    print(format_comparison(result))

