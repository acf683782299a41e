"""Seed studies (`transmed study FILE`): a published claim about transfer learning, fusion or learning
from unlabelled studies, tested on any config, in one command that trains the runs and writes `report.md` with its PNGs.

A study file (`configs/studies/*.yaml`) is YAML:

    study: depth                       # the analysis: depth | modes | uap | stepwise | fusion | semi
    title: How deeply to fine-tune the ImageNet stem
    paper: Kandel & Castelli 2020, Appl. Sci. 10:3359
    claim: Fine-tuning the whole network is not always best; ...
    base: demo-transfer.yaml           # the config every run starts from (--base replaces it)
    group: study-depth                 # W&B group and output folder (--group replaces it; --quick adds -quick)
    seeds: 3                           # training seeds per run: a count from the base's seed, or a list (default 3)
    overrides: [train.epochs=8]        # key=value for every run (optional)
    quick:                             # what --quick adds: short runs for a CPU (optional)
      overrides: [train.epochs=2]      # (and seeds: N; --quick defaults to 1 seed)
      settings: {max_iter: 3}
    settings: {}                       # the analysis' own settings (uap: zeta, norm, ...)
    runs:                              # in order; each one training run
      - name: blocks                   # folder name
        role: imagenet                 # what the analysis takes the run for (each study has its roles)
        set: {model.trainable_blocks: each}

In `set`, `each` expands the entry into one run per value the base config allows, named
`{name}-{value}`: `model.trainable_blocks: each` -> 0 .. (stages of the stem - 1) and all;
`data.modalities: each` -> each single modality. `model.init_from: run:NAME` starts from the best
checkpoint of the study's earlier run NAME. Overrides on the command line apply to every run;
`NAME:key=value` (a run's name or role before the key) to those runs only, e.g.
`intermediate:data.root=/data/other`.

Every run trains once per seed, as in `transmed ablate` (one W&B group, a failed run is a row with
its error, predictions on valid and, where the data has it, on test, which did not choose the epoch:
the shipped studies carve a validation set out of the training studies with data.val_fraction so
that they report on test). The uap study also crafts universal adversarial perturbations per run
and seed (`evaluation.adversarial.run_robustness`), each with a random control at its achieved norm,
and measures them on studies they were not crafted from.

Under `{output_dir}/{group}/`: `{run}/seed-{seed}/` per run and seed, `comparison.{csv,md,png}` (as
`ablate`), `report.md` (each claim next to what was measured, the per-run table, the per-seed table,
the plots) and its PNGs, and a W&B run `{group}/report` in the group holding the tables and plots.
An arm is the mean over its seeds; a claim's verdict follows the paired per-seed difference of two
arms on the same evaluation studies, with a 95% interval from one bootstrap over seeds and studies
together: "holds" or "does not hold" only when the interval excludes 0, "inconclusive" otherwise.

Modules: `spec` (what a study file holds: `Study`, its runs, `each` and `NAME:key=value`, one config
per run), `stats` (intervals and claim verdicts), `analysis` (what the analyses read, the depth, modes,
stepwise and fusion analyses, their plots), `uap` (the uap study's measurement and analysis), `kinds`
(the six kinds of study and `load_study`, which checks a file against its kind), `runner` (`run_study`,
report.md and the W&B report run). `run_study` is the one entry point; `transmed study` is its command.
"""

from .analysis import Results, analyse_fusion
from .kinds import KINDS, load_study
from .runner import run_study
from .spec import study_configs
from .stats import FAILS, HOLDS, NOT_MEASURED, Comparison, Interval, seeds_and_studies

__all__ = [
    "FAILS",
    "HOLDS",
    "KINDS",
    "NOT_MEASURED",
    "Comparison",
    "Interval",
    "Results",
    "analyse_fusion",
    "load_study",
    "run_study",
    "seeds_and_studies",
    "study_configs",
]
