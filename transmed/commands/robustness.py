"""Universal adversarial perturbation: transmed robustness --checkpoint FILE [--zeta 0.04] [--norm l2|linf]
[--source train|DIR] [--target NAME] [--split valid] [--out DIR] [key=value ...]

Crafts a UAP (Minagi, Hirano & Takemoto 2022) from the training studies or a folder of other images,
applies it to the evaluation split (disjoint from the crafting studies) and writes uap.json (fooling
rate against random perturbations with the UAP's achieved norm; the budget, the achieved norm and
zeta, the crafting-set rate, per-study outcomes), uap.npy and uap.png.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ._common import add_overrides, parser_for

NORMS = ("l2", "linf")  # evaluation.adversarial.NORMS, spelled here so --help imports no torch (tests/test_startup.py)


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    parser = parser_for(__doc__, prog)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--zeta", type=float, default=0.04, help="UAP norm as a fraction of the mean norm of a slice image (default 0.04)")
    parser.add_argument("--norm", default="l2", choices=NORMS)
    parser.add_argument("--source", default="train", help="'train' (the training studies) or a folder of .npy/.png images to craft from")
    parser.add_argument(
        "--target", default=None, help="targeted UAP: the task to push positive, the class to push to, or 'auto' (the one called least often)"
    )
    parser.add_argument("--split", default="valid", help="split the UAP is evaluated on (default valid)")
    parser.add_argument("--out", default=None, help="output folder (default: {run dir}/uap-{norm}-zeta{zeta}[-{target}][-external])")
    parser.add_argument("--step", type=float, default=0.1, help="FGSM step as a fraction of the UAP norm (default 0.1)")
    parser.add_argument("--max-iter", type=int, default=10, help="most passes over the crafting inputs (default 10)")
    parser.add_argument("--delta", type=float, default=0.2, help="stop once the crafting fooling rate reaches 1 - delta (default 0.2)")
    parser.add_argument(
        "--no-early-stop", action="store_true", help="run all --max-iter passes (Minagi et al. run with delta near 0); default: stop at 1 - delta"
    )
    parser.add_argument(
        "--random-trials", type=int, default=5, help="random perturbations at the UAP's achieved norm, averaged for the control (default 5)"
    )
    add_overrides(parser)
    args = parser.parse_intermixed_args(argv)
    if args.zeta <= 0:
        parser.error("--zeta must be positive")
    from ..evaluation.adversarial import run_robustness

    out = run_robustness(
        args.checkpoint,
        zeta=args.zeta,
        norm=args.norm,
        source=args.source,
        target=args.target,
        split=args.split,
        out=args.out,
        overrides=args.overrides,
        step=args.step,
        max_iter=args.max_iter,
        delta=args.delta,
        early_stop=not args.no_early_stop,
        random_trials=args.random_trials,
    )
    print(f"robustness result written to {out}")
    print((out / "uap.json").read_text())

