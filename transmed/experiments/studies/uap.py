"""The uap study: the extra measurement per run and seed (a UAP from the training studies, one from
natural images and a targeted one from natural images, each with its random control at the UAP's
achieved norm, all measured on held-out studies) and its analysis on the paired per-seed differences."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from ...core.errors import ConfigError
from ...core.tables import markdown_table
from ..ablation import has_split
from .analysis import Analysis, Results, _errorbars, positions, pretrained_note
from .spec import Study
from .stats import NAN, Comparison, Interval, seeds_and_studies, uniform_resamples

UAP_SETTINGS = {
    "zeta": 0.04,  # UAP norm budget relative to the mean norm of a training slice image (both sources: the same budget)
    "norm": "l2",
    "step": 0.1,
    "max_iter": 10,
    "delta": 0.2,
    "early_stop": True,  # false: every max_iter pass (Minagi et al. run with delta near 0)
    "targeted": True,  # also a targeted natural-image UAP, to the output the model calls least often

    "random_trials": 5,
    "natural_images": "sample",  # a folder of photos, or "sample": matplotlib's (and scikit-image's) bundled photos
    "crops": 48,  # random crops per sample photo
}
SKIMAGE_PHOTOS = ("astronaut", "camera", "cat", "coffee", "rocket", "grass", "gravel", "brick")


def sample_photos() -> list[tuple[str, Any]]:
    """(name, PIL image) of the natural photos bundled with matplotlib and, where installed, scikit-image."""
    from PIL import Image

    from ...models.weights import sample_image

    with Image.open(sample_image()) as photo:
        photos = [("grace_hopper", photo.convert("L"))]
    try:
        from skimage import data
    except ImportError:
        return photos
    for name in SKIMAGE_PHOTOS:
        try:
            array = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001, S112 - not bundled in this version, or needs a download
            continue
        image = Image.fromarray(array.astype(np.uint8) if array.dtype != np.uint8 else array)
        photos.append((name, image.convert("L")))
    return photos


def natural_image_folder(settings: dict, out_dir: Path, seed: int) -> Path:
    """The folder the natural-image UAP is crafted from: the setting's folder, or random crops of the
    sample photos written once to `{group}/natural-images/`."""
    if settings["natural_images"] != "sample":
        folder = Path(settings["natural_images"])
        if not folder.is_dir():
            raise ConfigError(f"study setting natural_images: folder not found: {folder}")
        return folder
    folder = out_dir / "natural-images"
    if folder.is_dir() and any(folder.glob("*.png")):
        return folder
    from PIL import Image

    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, photo in sample_photos():
        width, height = photo.size
        for i in range(int(settings["crops"])):
            side = int(rng.uniform(0.35, 1.0) * min(width, height))
            x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            crop = photo.crop((x, y, x + side, y + side)).resize((128, 128), Image.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            crop.save(tmp / f"{name}-{i:03d}.png")
    tmp.rename(folder)
    return folder


SOURCES = {"train": "training studies", "natural": "natural images", "targeted": "natural images, targeted"}


def measure_uap(run_dir: Path, cfg: DictConfig, study: Study, out_dir: Path) -> dict:
    """A UAP from the training studies and one from natural images with the same norm budget, and
    (setting `targeted`) a targeted one from natural images, each with its random control at its
    achieved norm, measured on test (where the data has it) or valid: studies the crafting never saw.
    Each `uap.json` (under `{run dir}/uap-{source}/`) keeps the per-study outcomes the analysis pairs."""
    from ...evaluation.adversarial import image_folder_batches, mean_slice_norm, run_robustness

    s = study.settings
    checkpoint = run_dir / "checkpoints" / "best.pt"
    split = "test" if has_split(cfg, "test") else "valid"
    common = {"norm": s["norm"], "split": split, "step": s["step"], "max_iter": int(s["max_iter"]), "delta": s["delta"]}
    common.update(early_stop=bool(s["early_stop"]), random_trials=int(s["random_trials"]))
    results, natural_zeta = {}, None
    for source in SOURCES if s["targeted"] else ("train", "natural"):
        folder = run_dir / f"uap-{source}"
        if not (folder / "uap.json").exists():  # a rerun (train.resume=auto) keeps what was measured
            if source == "train":
                run_robustness(checkpoint, zeta=float(s["zeta"]), source="train", out=folder, **common)
            else:
                images = natural_image_folder(s, out_dir, int(cfg.seed))
                if natural_zeta is None:  # the training UAP's budget, relative to the natural images' norm (read once)
                    natural_norm = mean_slice_norm(image_folder_batches(images, cfg, cfg.train.batch_size), s["norm"])
                    natural_zeta = float(s["zeta"]) * results["train"]["settings"]["mean_input_norm"] / natural_norm
                zeta = natural_zeta
                target = "auto" if source == "targeted" else None
                run_robustness(checkpoint, zeta=zeta, source=str(images), target=target, out=folder, **common)
        results[source] = json.loads((folder / "uap.json").read_text())
    row: dict[str, Any] = {"uap/split": split}
    for source, result in results.items():
        settings = result["settings"]
        row.update(
            {
                f"uap/{source}/rate": result["targeted_success_rate" if source == "targeted" else "fooling_rate"],
                f"uap/{source}/random_rate": result["random_targeted_success_rate" if source == "targeted" else "random_fooling_rate"],
                f"uap/{source}/radius": settings["radius"],
                f"uap/{source}/achieved_norm": max(settings["achieved_norm"]),
                f"uap/{source}/control_norm": max(settings["control_norm"]),  # the random draws' norm, measured
                # relative to a training slice image for every source, as the budget's zeta is
                f"uap/{source}/achieved_zeta": max(settings["achieved_norm"]) / results["train"]["settings"]["mean_input_norm"],
                f"uap/{source}/passes": settings["passes"],
                f"uap/{source}/crafting_rate": settings["crafting_rate"],
                "uap/n_eval": settings["n_eval"],
            }
        )
        if source == "targeted":
            row["uap/targeted/target"] = settings["target"]
            row["uap/targeted/clean_rate"] = result["clean_on_target_rate"]
        if "auc" in result:
            row.update({"auc/clean": result["auc"]["clean"], f"auc/{source}_uap": result["auc"]["uap"]})
    return row


def outcomes(row: pd.Series, source: str, control: bool) -> tuple[list[str], np.ndarray]:
    """(study ids, per-study outcome) of a run's UAP of `source` or of its random control: fooled (0/1),
    on target for the targeted UAP, the control's averaged over its trials."""
    per_study = json.loads((Path(row["dir"]) / f"uap-{source}" / "uap.json").read_text())["per_study"]
    name = ("random_" if control else "") + ("on_target" if source == "targeted" else "fooled")
    return list(per_study["id"]), np.asarray(per_study[name], dtype=float)


def rate_interval(results: Results, a: tuple[str | None, str, bool], b: tuple[str | None, str, bool] | None = None) -> Interval:
    """The mean over seeds of arm `a`'s rate, or of the paired difference a - b, on the same held-out
    studies; an arm is (run, source, control)."""
    arms = [a] if b is None else [a, b]
    if not all(run is not None and results.ok(run) for run, _, _ in arms):
        return NAN
    per_arm = []
    for run, source, control in arms:
        rows = sorted(results.rows(run), key=lambda r: int(r["seed"]))
        try:
            per_arm.append([outcomes(row, source, control) for row in rows])
        except (FileNotFoundError, KeyError):
            return NAN
    n_seeds = min(len(arm) for arm in per_arm)
    ids = sorted(set.intersection(*(set(ids) for arm in per_arm for ids, _ in arm[:n_seeds])))
    if not ids:
        return NAN
    aligned = [[values[positions(sids, ids)] for sids, values in arm[:n_seeds]] for arm in per_arm]

    def statistic(s: int, weights: np.ndarray) -> np.ndarray:
        values = aligned[0][s] - (aligned[1][s] if len(aligned) == 2 else 0.0)
        return weights @ values / weights.sum(axis=1)

    weights = uniform_resamples(len(ids), results.n_bootstrap, np.random.default_rng(0))
    return seeds_and_studies(statistic, n_seeds, weights, np.random.default_rng(1))


def analyse_uap(results: Results, out_dir: Path) -> Analysis:
    """Minagi, Hirano & Takemoto 2022: natural-image UAPs against random and training-image ones, pretrained and from scratch."""
    p, s = results.one("pretrained"), results.one("scratch")

    def compare(claim: str, a: tuple, b: tuple, expect: str, note: str = "") -> Comparison:
        name = lambda arm: f"{arm[0]} " + ("random" if arm[2] else {"train": "training UAP", "natural": "natural UAP"}.get(arm[1], "targeted natural UAP"))
        named = lambda arm: name(arm) + (f" ({arm[1]})" if arm[2] and arm[1] != "natural" else "")
        return Comparison(claim, named(a), named(b), rate_interval(results, a), rate_interval(results, b), rate_interval(results, a, b), expect, "rate", note)

    equal = "the control has the UAP's achieved norm, modality by modality"
    comparisons = [
        compare("Natural-image UAPs fool far more often than random perturbations of the same norm (pretrained)", (p, "natural", False), (p, "natural", True), "higher", equal),
        compare("(control) UAPs from the training images fool more often than random perturbations of the same norm (pretrained)", (p, "train", False), (p, "train", True), "higher", equal),
        compare(
            "... and a little less often than UAPs from the training images (pretrained)",
            (p, "natural", False),
            (p, "train", False),
            "lower",
            "the same budget, but each UAP's achieved norm is its own (table below); 'a little' is the size of the difference",
        ),
        compare("Training from scratch reduces the vulnerability to natural-image UAPs", (s, "natural", False), (p, "natural", False), "lower"),
        compare("... but does not remove it: natural-image UAPs still beat random (from scratch)", (s, "natural", False), (s, "natural", True), "higher", equal),
    ]
    if results.study.settings["targeted"]:
        comparisons.append(
            compare(
                "Targeted natural-image UAPs push studies to the target far more often than random perturbations of the same norm (pretrained)",
                (p, "targeted", False),
                (p, "targeted", True),
                "higher",
                "success: the target task predicted positive (or the target class predicted); the target is the output the model calls least often on clean studies",
            )
        )
    per_seed = []
    for row in results.rows(ok=False):
        for source, what in SOURCES.items():
            if pd.isna(row.get(f"uap/{source}/rate", np.nan)):
                continue
            per_seed.append(
                {
                    "run": row["run"],
                    "seed": int(row["seed"]),
                    "UAP from": what
                    + (f" (target {row['uap/targeted/target']}, clean {row['uap/targeted/clean_rate']:.3f})" if source == "targeted" else ""),
                    "budget (radius)": row[f"uap/{source}/radius"],
                    "achieved norm": row[f"uap/{source}/achieved_norm"],
                    "achieved zeta": row[f"uap/{source}/achieved_zeta"],
                    "random's norm": row.get(f"uap/{source}/control_norm", np.nan),
                    "passes": row[f"uap/{source}/passes"],
                    "crafting-set rate": row[f"uap/{source}/crafting_rate"],
                    "held-out rate": row[f"uap/{source}/rate"],
                    "random, same norm": row[f"uap/{source}/random_rate"],
                    "AUC clean": row.get("auc/clean"),
                    "AUC with UAP": row.get(f"auc/{source}_uap"),
                    "studies": row["uap/n_eval"],
                }
            )
    three = {k: ".3f" for k in ("crafting-set rate", "held-out rate", "random, same norm", "AUC clean", "AUC with UAP")}
    formats = {
        "budget (radius)": ".3g", "achieved norm": ".4g", "random's norm": ".4g", "achieved zeta": ".3g",
        "passes": "d", "studies": "d", "seed": "d", **three,
    }  # fmt: skip
    arms = []
    for run in results.runs():
        for source, what in SOURCES.items():
            rate, control = rate_interval(results, (run, source, False)), rate_interval(results, (run, source, True))
            if rate.measured:
                arms.append({"run": run, "UAP from": what, "held-out rate [95% CI]": rate.text(), "random, same norm [95% CI]": control.text()})
    tables = [
        (f"Rates on held-out studies, mean over {len(results.seeds)} seed(s)", markdown_table(arms) if arms else "no UAP was measured"),
        ("Per seed: norms, crafting-set and held-out rates", markdown_table(per_seed, formats=formats) if per_seed else "no UAP was measured"),
    ]
    split = next((str(r["uap/split"]) for r in results.rows() if isinstance(r.get("uap/split"), str)), "valid")
    st = results.study.settings
    notes = pretrained_note(results, ["pretrained"])
    notes.append(
        f"Rates on the {split} split, studies the UAPs were not crafted from (the crafting-set rate, on the crafting inputs "
        f"themselves, is shown apart: a UAP fools its own crafting studies more often). Fooling: the prediction changes (any "
        f"task flips at 0.5, or the class changes); a targeted rate counts the studies on target with the perturbation, 'clean' "
        f"those on target without it. Every UAP has the {st['norm']} norm budget zeta={st['zeta']:g} times the mean norm of a "
        f"training slice image (the natural UAPs' own zeta is rescaled to their inputs' norm; the achieved zeta in the table "
        f"is relative to a training slice image for every source); crafting "
        + (
            "stops once the crafting rate reaches 1 - delta, usually short of the budget"
            if st["early_stop"]
            else f"runs all {st['max_iter']} passes and keeps the best one, whose norm can stay under the budget (only steps "
            "that fool a study are kept)"
        )
        + f", so each random control ({st['random_trials']} draws) has its UAP's achieved norm, modality by modality. "
        f"Natural images: `{st['natural_images']}`"
        + (
            f" ({st['crops']} random crops per photo of matplotlib's, and where installed scikit-image's, sample photos)."
            if st["natural_images"] == "sample"
            else "."
        )
    )
    figure = out_dir / "uap.png"
    plot_fooling(results, figure)
    return Analysis(comparisons, notes, tables, [("Held-out rates, mean over seeds, with 95% intervals", figure)])


def plot_fooling(results: Results, path: Path) -> None:
    from matplotlib.figure import Figure

    labels, intervals = [], []
    for run in results.runs():
        for source, what in (("train", "training UAP"), ("natural", "natural UAP"), ("targeted", "targeted natural UAP")):
            for control in (False, True):
                interval = rate_interval(results, (run, source, control))
                if interval.measured:
                    labels.append(f"{run}: {'random, norm of the ' if control else ''}{what}")
                    intervals.append(interval)
    fig = Figure(figsize=(6.5, 1.4 + 0.35 * len(labels)))
    ax = fig.subplots()
    _errorbars(ax, labels, intervals, f"rate on held-out studies, mean over {len(results.seeds)} seed(s) (95% interval)", (0, 1.02))
    ax.set_title(results.study.title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
