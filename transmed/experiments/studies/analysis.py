"""The analyses of the depth, modes, stepwise, fusion and semi studies: what they read (`Results`), what
they return (`Analysis`: claims with verdicts, notes, tables, figures), and their plots. The uap study's
analysis is in `uap.py`."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from ...core.labels import LabelSpec
from ...core.tables import markdown_table
from ...data import label_kind
from ...evaluation.metrics import resampled_mean_auc, study_resamples
from .spec import Study
from .stats import NAN, Comparison, Interval, seconds_interval, seeds_and_studies

# ---------------------------------------------------------------------------------------------
# What the analyses read


def positions(ids: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Where each of `wanted` stands in `ids`."""
    index = {sid: i for i, sid in enumerate(ids)}
    return [index[sid] for sid in wanted]


@dataclass
class Results:
    """The runs of a study, each trained once per seed: `frame` has one row per run and seed (`run`,
    `role`, `seed`, `dir`, `status`, the ablation's values, extras) and `configs` the matching configs.

    An arm (a run name) is measured as the mean over its seeds; a comparison of two arms is the mean
    over seeds of their paired difference on the same evaluation studies. Intervals come from one
    bootstrap over seeds and studies together (`stats.seeds_and_studies`).
    """

    study: Study
    frame: pd.DataFrame
    configs: list[DictConfig]
    auc_key: str  # "test/auc" or "val/auc"
    n_bootstrap: int = 1000
    checkpoint: str = "best"  # whose predictions: best.pt's ({run}/predictions-*.csv) or last.pt's ({run}/last/, `measure_last`)
    _predictions: dict = field(default_factory=dict, repr=False)
    _intervals: dict = field(default_factory=dict, repr=False)  # ("auc", run) and ("diff", a, b) -> the interval, computed once

    @property
    def split(self) -> str:
        return "test" if self.auc_key.startswith("test") else "valid"

    @property
    def seeds(self) -> list[int]:
        return sorted({int(seed) for seed in self.frame["seed"]})

    def runs(self, role: str | None = None) -> list[str]:
        """Run names (arms) in the study's order, of `role` when given."""
        return [run.name for run in self.study.runs if role is None or run.role == role]

    def one(self, role: str) -> str | None:
        runs = self.runs(role)
        return runs[0] if runs else None

    def rows(self, run: str | None = None, ok: bool = True) -> list[pd.Series]:
        """The rows of `run` (every run when None), one per seed, finished ones only unless `ok=False`."""
        rows = [r for _, r in self.frame.iterrows() if run is None or r["run"] == run]
        return [r for r in rows if not ok or r["status"] == "ok"]

    def ok(self, run: str | None) -> bool:
        """Whether every seed of `run` finished."""
        rows = self.rows(run, ok=False) if run is not None else []
        return bool(rows) and all(r["status"] == "ok" for r in rows)

    def config(self, run: str) -> DictConfig:
        return self.configs[[str(r) for r in self.frame["run"]].index(run)]

    def predictions_file(self, row: pd.Series) -> Path:
        folder = Path(row["dir"]) / ("last" if self.checkpoint == "last" else "")
        return folder / f"predictions-{self.split}.csv"

    def predictions(self, row: pd.Series) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
        """(ids, probs (N, K), labels (N, K) 0/1, names) of the row's `checkpoint` on the report's split;
        the probabilities are the uncalibrated ones (from the logits), whose ranking the AUC of `evaluate` uses."""
        key = (row["dir"], self.split)
        if key not in self._predictions:
            frame = pd.read_csv(self.predictions_file(row), dtype={"id": str})
            names = [c.split("/", 1)[1] for c in frame.columns if c.startswith("prob/")]
            logits = torch.tensor(frame[[f"logit/{n}" for n in names]].to_numpy(np.float64))
            probs = LabelSpec(kind=label_kind(self.config(str(row["run"]))), names=tuple(names)).probabilities(logits, calibrated=False).numpy()
            self._predictions[key] = (list(frame["id"]), probs, frame[[f"label/{n}" for n in names]].to_numpy(int), names)
        return self._predictions[key]

    def _auc_statistic(self, runs: Sequence[str]) -> tuple[Callable[[int, np.ndarray], np.ndarray], int, np.ndarray] | None:
        """statistic(s, W) = AUC of runs[0] minus AUC of runs[1] (or the AUC of runs[0] alone) at seed s."""
        if not all(self.ok(run) for run in runs):
            return None
        per_run = [sorted(self.rows(run), key=lambda r: int(r["seed"])) for run in runs]
        n_seeds = min(len(rows) for rows in per_run)
        loaded = [[self.predictions(row) for row in rows[:n_seeds]] for rows in per_run]
        ids = sorted(set.intersection(*(set(p[0]) for arm in loaded for p in arm)))
        if not ids:
            return None
        first = loaded[0][0]
        kind = label_kind(self.config(runs[0]))
        onehot = first[2][positions(first[0], ids)]
        labels = onehot if kind == "multilabel" else onehot.argmax(axis=1)
        aligned = [[p[1][positions(p[0], ids)] for p in arm] for arm in loaded]
        names = first[3]

        def statistic(s: int, weights: np.ndarray) -> np.ndarray:
            values = [resampled_mean_auc(arm[s], labels, names, kind, weights) for arm in aligned]
            return values[0] - values[1] if len(values) == 2 else values[0]

        weights = study_resamples(labels, names, kind, self.n_bootstrap, np.random.default_rng(0))
        return statistic, n_seeds, weights

    def auc(self, run: str | None) -> Interval:
        """The arm's AUC on the report's split: mean over seeds, with its interval."""
        if ("auc", run) not in self._intervals:
            made = self._auc_statistic([run]) if run is not None else None
            self._intervals["auc", run] = NAN if made is None else seeds_and_studies(*made, np.random.default_rng(1))
        return self._intervals["auc", run]

    def auc_diff(self, a: str | None, b: str | None) -> Interval:
        """AUC of `a` minus AUC of `b`, paired by seed and study: mean over seeds, with its interval."""
        if ("diff", a, b) not in self._intervals:
            made = self._auc_statistic([a, b]) if a is not None and b is not None else None
            self._intervals["diff", a, b] = NAN if made is None else seeds_and_studies(*made, np.random.default_rng(1))
        return self._intervals["diff", a, b]

    def epoch_seconds(self, run: str) -> list[list[float]]:
        """Seconds per training epoch, one list per seed."""
        rows = sorted(self.rows(run), key=lambda r: int(r["seed"]))
        return [
            [json.loads(line)["sec/epoch"] for line in (Path(r["dir"]) / "metrics.jsonl").read_text().splitlines() if line.strip()]
            for r in rows
        ]

    def seconds(self, run: str | None) -> Interval:
        if run is None or not self.ok(run):
            return NAN
        return seconds_interval(self.epoch_seconds(run), n_bootstrap=self.n_bootstrap)

    def seconds_diff(self, a: str | None, b: str | None) -> Interval:
        if a is None or b is None or not (self.ok(a) and self.ok(b)):
            return NAN
        return seconds_interval(self.epoch_seconds(a), self.epoch_seconds(b), n_bootstrap=self.n_bootstrap)

    def best(self, runs: Sequence[str]) -> str | None:
        """The finished arm with the highest mean AUC over seeds (None when none has one)."""
        means = {run: float(np.mean([float(r[self.auc_key]) for r in self.rows(run)])) for run in runs if self.ok(run)}
        means = {run: value for run, value in means.items() if math.isfinite(value)}
        return max(means, key=means.get) if means else None

    def compare_auc(self, claim: str, a: str | None, b: str | None, expect: str = "higher", note: str = "", b_label: str = "") -> Comparison:
        return Comparison(claim, a or "", b_label or b or "", self.auc(a), self.auc(b), self.auc_diff(a, b), expect, "auc", note)

    def compare_seconds(self, claim: str, a: str | None, b: str | None, expect: str = "lower", note: str = "") -> Comparison:
        return Comparison(claim, a or "", b or "", self.seconds(a), self.seconds(b), self.seconds_diff(a, b), expect, "seconds", note)


@dataclass
class Analysis:
    comparisons: list[Comparison]
    notes: list[str] = field(default_factory=list)
    tables: list[tuple[str, str]] = field(default_factory=list)  # (heading, Markdown)
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, PNG)


def is_pretrained(cfg: DictConfig) -> bool:
    return bool(cfg.model.pretrained) and cfg.model.name != "cnn3d"


def pretrained_note(results: Results, roles: Sequence[str]) -> list[str]:
    """A warning when the runs that should start from ImageNet do not (e.g. a base with model.pretrained=false)."""
    runs = [run.name for run in results.study.runs if run.role in roles and not is_pretrained(results.config(run.name))]
    if not runs:
        return []
    return [
        (
            f"**Warning**: {', '.join(runs)} should start from ImageNet weights but have model.pretrained=false "
            "(random weights), so these runs do not test the claim; use a base with ImageNet weights "
            "(configs/demo-transfer.yaml, or model.pretrained=FILE from `transmed weights import`)."
        )
    ]


# ---------------------------------------------------------------------------------------------
# The analyses


def analyse_depth(results: Results, out_dir: Path) -> Analysis:
    """Kandel & Castelli 2020: the top blocks only against the whole network, and the time it takes."""
    imagenet = results.runs("imagenet")
    full = next((run for run in imagenet if str(results.config(run).model.trainable_blocks) == "all"), None)
    partial = results.best([run for run in imagenet if run != full])
    scratch = results.one("scratch")
    select = "the best partial depth is chosen by its mean AUC on the same split, which favours it"
    comparisons = [
        results.compare_auc(
            "Tuning only the top blocks generalises as well as or better than tuning the whole network",
            partial,
            full,
            note=select,
            b_label="" if partial else "best partial depth",
        ),
        results.compare_seconds("Tuning only the top blocks saves training time", partial, full, note="sec/epoch, training only"),
        results.compare_auc("(context, not the paper's claim) ImageNet initialisation beats training from scratch", full, scratch),
    ]
    figure = out_dir / "depth.png"
    plot_panels(results, figure, [("AUC", results.auc), ("sec/epoch", results.seconds)], results.study.title)
    return Analysis(comparisons, pretrained_note(results, ["imagenet"]), figures=[("AUC and seconds per epoch per run", figure)])


def analyse_modes(results: Results, out_dir: Path) -> Analysis:
    """Kim et al. 2022: a frozen ImageNet stem as feature extractor against fine-tuning it."""
    extractor, finetune, scratch = results.one("extractor"), results.one("finetune"), results.one("scratch")
    backbone = results.configs[0].model.backbone
    comparisons = [
        results.compare_auc(
            "A feature extractor loses no accuracy against fine-tuning",
            extractor,
            finetune,
            note="'no loss' is shown only by a difference above 0; an interval that holds 0 neither shows nor excludes a loss",
        ),
        results.compare_seconds("A feature extractor saves compute", extractor, finetune, note="sec/epoch, training only"),
        results.compare_auc("(context) fine-tuning from ImageNet beats training from scratch", finetune, scratch),
    ]
    notes = pretrained_note(results, ["extractor", "finetune"])
    if not re.match(r"(resnet|inception)", backbone):
        notes.append(f"The recommendation is about ResNet and Inception stems; this study ran `{backbone}`.")
    figure = out_dir / "modes.png"
    plot_panels(results, figure, [("AUC", results.auc), ("sec/epoch", results.seconds)], results.study.title)
    return Analysis(comparisons, notes, figures=[("AUC and seconds per epoch per transfer mode", figure)])


def analyse_stepwise(results: Results, out_dir: Path) -> Analysis:
    """Qu et al. 2018: ImageNet -> intermediate data -> target against ImageNet -> target."""
    comparisons = [
        results.compare_auc(
            "Stepwise fine-tuning (ImageNet -> intermediate -> target) beats fine-tuning ImageNet weights on the target directly",
            results.one("stepwise"),
            results.one("direct"),
        ),
    ]
    notes = pretrained_note(results, ["intermediate", "direct"])
    for run in results.study.runs:
        if run.role == "intermediate":
            cfg = results.config(run.name)
            notes.append(
                f"Intermediate run `{run.name}`: data.format={cfg.data.format}, data.root=`{cfg.data.root}`, tasks {list(cfg.data.tasks)}, "
                f"modalities {list(cfg.data.modalities)}; its AUC in the table is on its own data. The stepwise run of each seed starts "
                "from the intermediate run of the same seed and loads every tensor whose name and shape match (a head of another "
                "size keeps its fresh initialisation)."
            )
    figure = out_dir / "stepwise.png"
    plot_panels(results, figure, [("AUC", results.auc)], results.study.title)
    return Analysis(comparisons, notes, figures=[("AUC per run (the intermediate on its own data)", figure)])


def analyse_fusion(results: Results, out_dir: Path) -> Analysis:
    """TransMed (Dai, Gao & Liu 2021): transformer fusion against simpler fusion and single modalities."""
    transmed = results.one("transmed")
    comparisons = []
    for role, what in (
        ("late_fusion", "late fusion of the same stem"),
        ("mrnet", "MRNet (a CNN per modality, max over slices)"),
        ("cnn3d", "a 3D CNN"),
    ):
        for other in results.runs(role):
            comparisons.append(results.compare_auc(f"Transformer fusion beats {what}", transmed, other))
    single = results.best(results.runs("single"))
    comparisons.append(
        results.compare_auc(
            "Fusing all modalities beats the best single modality",
            transmed,
            single,
            note="the best single modality is chosen by its mean AUC on the same split, which favours it",
            b_label="" if single else "best single modality",
        )
    )
    notes = pretrained_note(results, ["transmed", "late_fusion", "mrnet", "single"])
    bound = fusion_bound(results.configs[0], results.split)
    if bound is not None:
        notes.append(bound)
    figure = out_dir / "fusion.png"
    plot_panels(results, figure, [("AUC", results.auc), ("sec/epoch", results.seconds)], results.study.title)
    return Analysis(comparisons, notes, figures=[("AUC and seconds per epoch per model", figure)])


def fusion_bound(cfg: DictConfig, split: str) -> str | None:
    """The synthetic generator's statement of the best AUC one modality can reach, where the data has one."""
    path = Path(str(cfg.data.root)) / "fusion_bound.json"
    if not path.is_file():
        return None
    bound = json.loads(path.read_text())
    # the MRNet layout's `valid` is the test split once data.val_fraction carves validation out of train
    stored = "valid" if split == "test" and cfg.data.format in ("mrnet", "synthetic") else split
    here = bound.get("splits", {}).get(stored, {}).get("best_single_modality")
    on_split = f", {here:.3f} on the labels of the {split} split" if here is not None else ""
    return (
        f"The data needs fusion: no single modality can reach a mean AUC above {bound['population']['best_single_modality']:.3f}"
        f"{on_split} (`{path}`: {bound['derivation']})."
    )


SEMI_ROLES = ("labelled", "pseudo_label", "tri_net")  # train.semi.method none, pseudo_label, tri_net


@dataclass
class Fraction:
    """The runs of a semi study that share one data set (`data.root`): one labelled fraction."""

    root: str
    label: str  # "10% labelled (24 of 240)", or the data root for data other than synthetic
    fraction: float  # labelled / (labelled + unlabelled); NaN when unknown
    labelled: int | None  # labelled training studies (data.val_fraction holds some out to choose the epoch)
    held_out: int | None
    unlabelled: int | None
    runs: dict[str, list[str]]  # role -> run names, in the study's order


def semi_fractions(results: Results) -> list[Fraction]:
    """The study's runs grouped by data set, in the order the study first names each."""
    fractions: dict[str, Fraction] = {}
    for run in results.study.runs:
        cfg = results.config(run.name)
        root = str(cfg.data.root)
        if root not in fractions:
            if cfg.data.format == "synthetic":
                n, u = int(cfg.data.synthetic.num_train), int(cfg.data.synthetic.num_unlabelled)
                held = math.floor(n * cfg.data.val_fraction) if cfg.data.val_fraction is not None else None
                share = n / (n + u)
                label = f"{100 * share:.3g}% labelled ({n} of {n + u})"
                fractions[root] = Fraction(root, label, share, n, held, u, {})
            else:
                fractions[root] = Fraction(root, f"data.root {root}", math.nan, None, None, None, {})
        fractions[root].runs.setdefault(run.role, []).append(run.name)
    return list(fractions.values())


def read_semi_log(run_dir: str | Path) -> list[dict]:
    """The rounds of pseudo-labelling a run wrote to `semi.jsonl` (one JSON object per line; a line that
    does not parse, such as one cut off by a crash, is left out); [] when there is no file."""
    path = Path(run_dir) / "semi.jsonl"
    if not path.is_file():
        return []
    rounds = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            rounds.append(record)
    return rounds


def _count(value, of: int | None = None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "unknown"
    share = f" ({100 * value / of:.0f}%)" if of else ""
    return f"{int(value)}{share}"


def pseudo_label_table(results: Results, fractions: Sequence[Fraction]) -> tuple[str, list[str]]:
    """The last round of each semi-supervised run and seed (Markdown), and the runs (seeds) without `semi.jsonl`."""
    unlabelled = {name: f.unlabelled for f in fractions for names in f.runs.values() for name in names}
    rows, missing = [], []
    for run in results.study.runs:
        if run.role == "labelled":
            continue
        without = []
        for r in sorted(results.rows(run.name, ok=False), key=lambda r: int(r["seed"])):
            rounds = read_semi_log(r["dir"])
            if not rounds:
                without.append(str(int(r["seed"])))
                continue
            last = rounds[-1]
            entries = last.get("entries")
            correct = last.get("correct")
            of = last.get("unlabelled") or unlabelled.get(run.name)  # the run's own count of data.unlabelled_root, else the config's
            rows.append(
                {
                    "run": run.name,
                    "seed": str(int(r["seed"])),
                    "rounds": str(len(rounds)),
                    "last epoch": str(last.get("epoch", "")),
                    "method": str(last.get("method", "")),
                    "pseudo-labelled studies (share of the unlabelled)": _count(last.get("pseudo_labelled"), of),
                    "edited out": _count(last.get("edited")),
                    "entries": _count(entries),
                    "correct entries": _count(correct, entries if isinstance(entries, (int, float)) and entries else None),
                }
            )
        if without:
            train = results.config(run.name).train
            why = "; train.semi.warmup_epochs covers every epoch, so no round ran" if train.semi.warmup_epochs >= train.epochs else ""
            missing.append(f"{run.name} (seed{'s' if len(without) > 1 else ''} {', '.join(without)}{why})")
    return (markdown_table(rows) if rows else ""), missing


def measure_last(run_dir: Path, cfg: DictConfig, study: Study, out_dir: Path) -> dict:
    """last.pt's predictions beside best.pt's (`{run}/last/predictions-{split}.csv`), for the claims at the last
    epoch: the semi study holds out a few labelled studies to choose the epoch, too few to choose it well."""
    from ..ablation import bootstrap_aucs

    folder = run_dir / "last"
    folder.mkdir(exist_ok=True)
    aucs = bootstrap_aucs(run_dir / "checkpoints" / "last.pt", n_bootstrap=100, save_to=folder)
    return {"last/auc": aucs.get("test", aucs["valid"])["value"]}


def at_last_epoch(claim: str) -> str:
    """The claim, said of the last epoch: "(next to it) X" -> "(next to it; at the last epoch, which nothing chose) X"."""
    aside = "(next to it) "
    if claim.startswith(aside):
        return f"(next to it; at the last epoch, which nothing chose) {claim[len(aside):]}"
    return f"(at the last epoch, which nothing chose) {claim}"


def analyse_semi(results: Results, out_dir: Path) -> Analysis:
    """Tri-net (Chen, Wang, Gao & Zhou 2018) and pseudo-labelling against the labelled studies alone, per labelled fraction."""
    fractions = semi_fractions(results)
    comparisons = []
    for f in fractions:
        for labelled in f.runs.get("labelled", [None])[:1]:
            for tri in f.runs.get("tri_net", []):
                comparisons.append(
                    results.compare_auc(
                        f"Tri-net with the unlabelled studies beats training on the labelled studies alone, at {f.label}",
                        tri,
                        labelled,
                        b_label="" if labelled else "labelled only",
                    )
                )
            for pseudo in f.runs.get("pseudo_label", []):
                comparisons.append(
                    results.compare_auc(
                        f"(next to it) Pseudo-labelling with the unlabelled studies beats training on the labelled studies alone, at {f.label}",
                        pseudo,
                        labelled,
                        b_label="" if labelled else "labelled only",
                    )
                )
    last = replace(results, checkpoint="last", _predictions={}, _intervals={})
    measured_last = all(last.predictions_file(row).is_file() for row in results.rows())
    if measured_last:
        comparisons += [
            replace(c, claim=at_last_epoch(c.claim), ia=last.auc(c.a), ib=last.auc(c.b), diff=last.auc_diff(c.a, c.b))
            for c in list(comparisons)
        ]
    notes = pretrained_note(results, list(SEMI_ROLES))
    notes += semi_bar(results, fractions, comparisons)
    if comparisons and measured_last:
        notes.append(
            "best.pt is the epoch the validation studies chose; with a few of them that choice is close to chance, so the "
            "claims are also measured at the last epoch (`last/predictions-*.csv` beside each run's), where nothing was chosen."
        )
    synthetic = [f for f in fractions if f.labelled is not None]
    if synthetic:
        cfg = results.config(results.study.runs[0].name)
        notes.append(
            f"Each labelled fraction is its own synthetic set (`data.root`, data.synthetic.seed={cfg.data.synthetic.seed}): labelled "
            "training studies, unlabelled studies in `{root}/unlabelled` (data.unlabelled_root of the pseudo_label and tri_net "
            "runs; the labelled runs do not read them), and the "
            f"{int(cfg.data.synthetic.num_valid)} studies of the {results.split} split the AUCs are on. "
            + (
                f"data.val_fraction={cfg.data.val_fraction} holds some labelled studies out to choose the epoch. "
                if cfg.data.val_fraction is not None
                else ""
            )
            + "The arms of one fraction share its set, so their differences are paired; compare fractions by their differences, "
            "since each fraction's set is generated apart."
        )
    rows = []
    for f in fractions:
        row = {
            "data": f.label,
            "labelled studies: train + choose the epoch": (
                f"{f.labelled - f.held_out} + {f.held_out}" if f.held_out is not None else str(f.labelled or "")
            ),
            "unlabelled studies": "" if f.unlabelled is None else str(f.unlabelled),
        }
        for role in SEMI_ROLES:
            names = f.runs.get(role, [])
            row[f"{role} {results.split} AUC [95% CI]"] = "; ".join(results.auc(n).text() or "not measured" for n in names)
        rows.append(row)
    tables = [(f"{results.split.capitalize()} AUC per labelled fraction (mean over seeds)", markdown_table(rows))]
    pseudo, missing = pseudo_label_table(results, fractions)
    if pseudo:
        tables.append(
            (
                "Pseudo-labels in each run's last round (`semi.jsonl`)",
                pseudo
                + "\n\nPseudo-labelled studies: unlabelled studies with at least one pseudo-label in that round; edited out: "
                "studies that only pseudo-labels unstable under dropout would have labelled (tri-net's editing); entries: "
                "pseudo-labels (one per classifier and task, or classifier and study for one class per study); correct: "
                "entries that match the label the synthetic generator drew (unknown where it is not known).",
            )
        )
    if missing:
        notes.append(f"No pseudo-label record (`semi.jsonl`) for {', '.join(missing)}.")
    figure = out_dir / "semi.png"
    plot_fractions(results, fractions, figure)
    return Analysis(comparisons, notes, tables, [(f"{results.split} AUC per labelled fraction and method", figure)])


def semi_bar(results: Results, fractions: Sequence[Fraction], comparisons: Sequence[Comparison]) -> list[str]:
    """Issue 23's bar: at `bar_fraction` labelled, tri_net - labelled >= `bar_auc` AUC, mean over at least 3 seeds."""
    settings = results.study.settings
    fraction, margin = float(settings.get("bar_fraction", 0.1)), float(settings.get("bar_auc", 0.03))
    wanted = f"tri_net - labelled >= {margin:+.3f} {results.split} AUC at {100 * fraction:.3g}% labelled, mean over 3 seeds"
    at = [f for f in fractions if f.labelled is not None and abs(f.fraction - fraction) <= 0.5 / (f.labelled + f.unlabelled)]
    tri = at[0].runs.get("tri_net", [])[:1] if at else []
    found = next((c for c in comparisons if tri and c.a == tri[0]), None)
    if found is None or not found.diff.measured:
        why = "no run at that fraction" if not at else "not measured"
        return [f"Bar (issue 23): {wanted}: {why}."]
    d = found.diff
    met = "**met**" if d.value >= margin else "**not met**"
    seeds = len(results.seeds)
    interval = (
        f"; the 95% interval's low end {d.low:+.3f} is {'above' if d.low >= margin else 'below'} the bar" if d.has_interval else ""
    )
    short = f" (on {seeds} seed(s); the bar asks for 3)" if seeds < 3 else ""
    return [f"Bar (issue 23): {wanted}: measured {d.value:+.3f}{interval}: {met}{short}."]


# ---------------------------------------------------------------------------------------------
# Plots


def _errorbars(ax, labels: list[str], intervals: list[Interval], xlabel: str, xlim: tuple[float, float] | None = None) -> None:
    y = np.arange(len(labels))[::-1]
    for yi, interval in zip(y, intervals):
        if not interval.measured:
            ax.text(0.5, yi, "not measured", ha="center", va="center", color="tab:red", transform=ax.get_yaxis_transform())
            continue
        err = None
        if interval.has_interval:
            err = [[interval.value - interval.low], [interval.high - interval.value]]
        ax.errorbar([interval.value], [yi], xerr=err, fmt="o", capsize=3, color="tab:blue")
    ax.set_yticks(y, labels)
    ax.set_xlabel(xlabel)
    if xlim:
        ax.set_xlim(*xlim)


def plot_panels(results: Results, path: Path, panels: list[tuple[str, Callable]], title: str) -> None:
    """One panel per measure (AUC, seconds per epoch): a point per run (mean over seeds) with its 95% interval."""
    from matplotlib.figure import Figure

    labels = results.runs()
    fig = Figure(figsize=(4.5 * len(panels), 1.4 + 0.4 * len(labels)))
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    seeds = len(results.seeds)
    for ax, (name, measure) in zip(axes, panels):
        intervals = [measure(run) for run in labels]
        xlabel = f"{results.split} {name}" if name == "AUC" else name
        _errorbars(ax, labels, intervals, f"{xlabel}, mean over {seeds} seed(s) (95% interval)", (0, 1.02) if name == "AUC" else None)
        if name == "AUC":
            ax.axvline(0.5, color="grey", lw=0.5, ls="--")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_fractions(results: Results, fractions: Sequence[Fraction], path: Path) -> None:
    """AUC (mean over seeds, 95% interval) per labelled fraction, one line per method."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    x = np.arange(len(fractions))
    for k, role in enumerate(SEMI_ROLES):
        points = [(i, results.auc(f.runs[role][0])) for i, f in enumerate(fractions) if f.runs.get(role)]
        points = [(i, v) for i, v in points if v.measured]
        if not points:
            continue
        xs = np.array([i for i, _ in points]) + (k - 1) * 0.08
        ys = [v.value for _, v in points]
        err = np.array([[v.value - v.low, v.high - v.value] if v.has_interval else [0.0, 0.0] for _, v in points]).T
        ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, label=role)
    ax.set_xticks(x, [f.label.replace(" (", "\n(") for f in fractions])
    ax.set_ylabel(f"{results.split} AUC (mean of {len(results.seeds)} seed(s), 95% CI)")
    ax.axhline(0.5, color="grey", lw=0.5, ls="--")
    ax.legend()
    ax.set_title(results.study.title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
