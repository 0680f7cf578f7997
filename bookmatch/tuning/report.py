"""The report of a study: `report.md` (trials table, parameter importances, the best trial), `trials.png`, and
the best trial's settings as `best_config.yaml`, which `bookmatch train contrastive --config` takes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from bookmatch.storage import atomic_write_text

BEST_CONFIG = "best_config.yaml"
REPORT = "report.md"
PLOT = "trials.png"


def best_trial(study):
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    return max(complete, key=lambda t: t.value, default=None)


def write_best_config(trial, path: Path) -> Path:
    """The trial's settings (every ContrastiveTrainConfig setting except data, out and resume) as YAML."""
    header = (
        f"# The best trial of `bookmatch tune` (trial {trial.number}, validation AUC {trial.value:.4f}).\n"
        "# Its settings, search budget (max_steps, sample) included; train with them:\n"
        "#   bookmatch train contrastive --config best_config.yaml --data DATA --out OUT\n"
    )
    return atomic_write_text(path, header + yaml.safe_dump(trial.user_attrs["settings"], sort_keys=False))


def importances(study) -> dict[str, float] | str:
    """Optuna's parameter importances (fANOVA) over the complete trials, or why there are none."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return "fewer than two complete trials"
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError) as err:
        return f"not computable ({err})"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trials_table(study) -> str:
    trials = study.get_trials(deepcopy=False)
    names = sorted({name for t in trials for name in t.params})
    head = ["trial", "state", "val AUC", "last step", "minutes", *names, "note"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in trials:
        steps = max(t.intermediate_values, default=None)
        minutes = t.duration.total_seconds() / 60 if t.duration is not None else None
        note = "baseline (space base)" if t.user_attrs.get("baseline") else ""
        if "retry_of" in t.user_attrs:
            note = (note + f"; retry of trial {t.user_attrs['retry_of']}").lstrip("; ")
        cells = [
            str(t.number),
            t.state.name.lower(),
            "" if t.value is None else f"{t.value:.4f}",
            "" if steps is None else str(steps),
            "" if minutes is None else f"{minutes:.1f}",
            *(_fmt(t.params[n]) if n in t.params else "" for n in names),
            note,
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_trials(study, path: Path) -> Path:
    """Left: each trial's validation AUC at every evaluation (pruned trials dashed). Right: each finished trial's
    value and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, values) = plt.subplots(1, 2, figsize=(11, 4))
    best, xs, ys, bests = -math.inf, [], [], []
    for t in study.get_trials(deepcopy=False):
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            style = "--" if t.state.name == "PRUNED" else "-"
            curves.plot(steps, [t.intermediate_values[s] for s in steps], style, marker="o", label=f"trial {t.number}")
        if t.state.name == "COMPLETE" and t.value is not None:
            best = max(best, t.value)
            xs.append(t.number)
            ys.append(t.value)
            bests.append(best)
    curves.set(xlabel="optimizer step", ylabel="validation AUC", title="evaluations (pruned: dashed)")
    if study.get_trials(deepcopy=False):
        curves.legend(fontsize=7, ncol=2)
    values.plot(xs, ys, "o", label="complete trial")
    values.step(xs, bests, where="post", label="best so far")
    values.set(xlabel="trial", ylabel="best validation AUC of the run", title="trials")
    values.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(study, study_dir: Path) -> tuple[Path | None, Path]:
    """report.md, trials.png and (once a trial completed) best_config.yaml in `study_dir`."""
    study_dir = Path(study_dir)
    best = best_trial(study)
    best_config = write_best_config(best, study_dir / BEST_CONFIG) if best is not None else None
    plot_trials(study, study_dir / PLOT)
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    found = importances(study)
    lines = [
        "# bookmatch tune: study report",
        "",
        f"Study `{study_dir}`; space `{study.user_attrs.get('space_source', '?')}`; objective: best validation-split "
        "AUC of each trial's run (maximised).",
        "",
        "Trials: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())),
        "",
        "## Best trial",
        "",
        "none complete yet"
        if best is None
        else f"Trial {best.number}: validation AUC {best.value:.4f}; params `{json.dumps(best.params)}`; "
        f"config `{BEST_CONFIG}`.",
        "",
        "## Trials",
        "",
        trials_table(study),
        "",
        "## Parameter importances (fANOVA over the complete trials)",
        "",
        found if isinstance(found, str) else "\n".join(f"- {name}: {value:.3f}" for name, value in found.items()),
        "",
        f"![trials]({PLOT})",
        "",
    ]
    report = atomic_write_text(study_dir / REPORT, "\n".join(lines))
    return best_config, report
