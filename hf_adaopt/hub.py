"""Publish a training run or an optimizer comparison to the Hugging Face Hub, with its card.

The only module of hf-adaopt that talks to the Hub.

    hf-adaopt push out/d --repo_id user/adaopt-digits              # a run: model repo, model card
    hf-adaopt push out/c10 --repo_id user/adaopt-cifar10-results   # a comparison: dataset repo, results card
    hf-adaopt push out/d --repo_id user/x --dry_run out/preview     # write what would be uploaded; contact nothing

A *run directory* (written by `hf-adaopt train` / `training_scripts/train.py`) holds eval_results.json,
run_config.json and the saved model; it becomes a model repo with the model files, the results files, the
plots and a model card (README.md) whose `model-index` carries the measured eval accuracy and loss.
A *comparison directory* (written by `hf-adaopt compare`) holds results.jsonl, results.json and report.md;
it becomes a dataset repo (repo_type="dataset") with those files, the plots and a results card.

How a push goes: the files to upload are staged in a temporary directory (the local results are only read,
never modified, and stay where they are whatever happens), the card is rendered from the templates in
`hf_adaopt.model_cards` and parsed back with `huggingface_hub`'s card classes, then `whoami` checks the
token, `create_repo(exist_ok=True)` makes the repo, `create_branch` the `--revision` when it is not main,
and one `upload_folder` commit sends everything. These are the methods of an `HfApi(endpoint=...)` (what
`huggingface_hub.create_repo` / `upload_folder` call), so that the endpoint is `HF_ENDPOINT` as set when the
push starts, also when huggingface_hub was imported earlier (default https://huggingface.co). The token is
`--token`, else `HF_TOKEN`, else the login cache of `hf auth login`. A Hub token found in a text file to
upload (e.g. `--hub_token` recorded in run_config.json's command) is replaced in the uploaded copy.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_adaopt import results as store
from hf_adaopt.logs import get_logger

logger = get_logger(__name__)

RUN_MARKERS = ("eval_results.json", store.RUN_CONFIG_FILE)
COMPARISON_MARKERS = (store.RESULTS_FILE, store.RESULTS_JSON, store.REPORT_FILE)
# A model repo without weights is useless: one of these must sit next to config.json.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Never uploaded: the card is re-rendered, and training_args.bin is a pickle with local paths in it.
SKIPPED_FILES = ("README.md", "training_args.bin")
CARD_NAME = "README.md"
LICENSE = "apache-2.0"
DEFAULT_ENDPOINT = "https://huggingface.co"

# task -> (Hub task type, readable dataset name, Hub dataset id or None)
TASKS = {
    "digits": ("image-classification", "scikit-learn digits (load_digits, 8x8)", None),
    "mnist": ("image-classification", "MNIST", "ylecun/mnist"),
    "cifar10": ("image-classification", "CIFAR-10", "uoft-cs/cifar10"),
    "imdb": ("text-classification", "IMDB", "stanfordnlp/imdb"),
    "squad": ("question-answering", "SQuAD v1.1", "rajpurkar/squad"),
}
# eval_results.json key -> (model-index metric type, readable name); only the keys present are used.
EVAL_METRICS = {
    "eval_accuracy": ("accuracy", "Accuracy"),
    "eval_loss": ("loss", "Loss"),
    "eval_exact_match": ("exact_match", "Exact match"),
    "eval_f1": ("f1", "F1"),
}
# Keys of the Trainer's eval dict that describe speed, not quality.
_SPEED_KEYS = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch")

# Hub access tokens ("hf_" + 34 letters and digits) are never published, whatever file they ended up in
# (e.g. `--hub_token` recorded in a run's command line): staged copies and cards carry REDACTED instead.
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{30,}")
_TOKEN_FLAGS = ("--hub_token", "--token")
_TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".txt", ".csv", ".yaml", ".yml", ".log")
REDACTED = "<redacted>"

REPO_ID_HELP = (
    "expected 'namespace/name' (your user or organisation name, a slash, the repo name), e.g. "
    "'alice/adaopt-digits': letters, digits, '-', '_' and '.', at most 96 characters, no '--' or '..', "
    "not starting or ending with '-' or '.'"
)
TOKEN_HELP = (
    "log in with `hf auth login`, or set HF_TOKEN (or pass --token) to a token with write access from "
    "https://huggingface.co/settings/tokens"
)


class HubPushError(RuntimeError):
    """A push that could not be completed; the message names the problem and the fix."""


@dataclass
class PushResult:
    repo_id: str
    repo_type: str  # "model" | "dataset"
    files: list[str]  # paths in the repo, sorted
    url: str | None = None  # repo URL (None for a dry run)
    commit_url: str | None = None
    dry_run_dir: str | None = None
    card: Any = field(default=None, repr=False)  # the ModelCard / DatasetCard that was uploaded


# ---------------------------------------------------------------------------------------------------------
# Reading the local results
# ---------------------------------------------------------------------------------------------------------
def detect_kind(directory: str | os.PathLike) -> str:
    """'run' or 'comparison', from the files in `directory`; ValueError naming what is missing otherwise."""
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"{str(d)!r} is not a directory: pass the --output_dir of a training run or a comparison")
    if all((d / f).is_file() for f in RUN_MARKERS):
        return "run"
    if all((d / f).is_file() for f in COMPARISON_MARKERS):
        return "comparison"
    present = sorted(p.name for p in d.iterdir() if p.is_file())
    raise ValueError(
        f"{str(d)!r} is neither a run directory (needs {' + '.join(RUN_MARKERS)}, written by `hf-adaopt train`) "
        f"nor a comparison directory (needs {' + '.join(COMPARISON_MARKERS)}, written by `hf-adaopt compare`); "
        f"it holds {present or 'no files'}"
    )


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({err}); rerun the command that wrote it") from err


def _files_to_upload(directory: Path) -> list[Path]:
    """Top-level regular files, minus the card (re-rendered), pickles of local settings and hidden/private files.

    Sub-directories (checkpoint-*, runs/, per-run outputs of a comparison) stay local.
    """
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.name not in SKIPPED_FILES and not p.name.startswith((".", "_"))
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any, digits: int = 4) -> str:
    """A number for a Markdown table: `digits` significant digits; other values as str()."""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt(v, digits) for v in value) + ")"
    return str(value)


def _num(value: Any, digits: int = 4) -> str:
    """A table cell for a number that may be missing or nan ("–")."""
    return _fmt(float(value), digits) if _is_number(value) else "–"


def _cell(summary: dict | None, scale: float = 1.0, decimals: int | None = None) -> str:
    """`mean ± std [ci_low, ci_high]` of a summary, scaled (accuracy in %), "–" when missing."""
    if not summary or not _is_number(summary.get("mean")):
        return "–"

    def f(v):
        return f"{v * scale:.{decimals}f}" if decimals is not None else _fmt(v * scale)

    text = f(summary["mean"])
    if _is_number(summary.get("std")):
        text += f" ± {f(summary['std'])}"
    if _is_number(summary.get("ci_low")) and _is_number(summary.get("ci_high")):
        text += f" [{f(summary['ci_low'])}, {f(summary['ci_high'])}]"
    return text


def _reproduce_command(command: str | None) -> str | None:
    """The recorded `" ".join(sys.argv)` as a command a user can paste: `hf-adaopt ...` or `python x.py ...`."""
    if not command:
        return None
    try:
        argv = shlex.split(command)
    except ValueError:
        return command
    if not argv:
        return None
    for i in reversed(range(len(argv))):  # a token on the command line is not part of the recipe
        flag = argv[i].split("=", 1)[0]
        if flag in _TOKEN_FLAGS:
            del argv[i : i + (1 if "=" in argv[i] else 2)]
    head = argv[0]
    if Path(head).name in ("hf-adaopt", "cli.py") or head.endswith("hf_adaopt/cli.py"):
        argv[0] = "hf-adaopt"
    elif head.endswith(".py") and Path(head).name != "python":
        argv.insert(0, "python")
    return shlex.join(argv)


def _redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with every Hub token in it (the known `secrets` and anything shaped like one) replaced."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return _TOKEN_PATTERN.sub(REDACTED, text)


def _known_secrets(token: str | None) -> tuple[str, ...]:
    """The tokens this process could push with: never to be published."""
    found = {token, os.environ.get("HF_TOKEN")}
    try:
        from huggingface_hub import get_token

        found.add(get_token())  # HF_TOKEN or the login cache: a local read
    except Exception:  # best effort: the pattern still catches standard tokens
        pass
    return tuple(sorted(t for t in found if t and len(t) >= 8))


def _repo_name(repo_id: str) -> str:
    return repo_id.split("/")[-1]


# ---------------------------------------------------------------------------------------------------------
# Cards
# ---------------------------------------------------------------------------------------------------------
def _template(name: str) -> str:
    return importlib.resources.files("hf_adaopt.model_cards").joinpath(name).read_text(encoding="utf-8")


def _lr_summary(trajectory: dict | None) -> dict | None:
    """What the optimizer did, from lr_trajectory.json: effective-lr range and the final AdaOpt factors."""
    if not trajectory or not trajectory.get("lr"):
        return None
    lrs = [float(v) for v in trajectory["lr"] if _is_number(v)]
    if not lrs:
        return None
    mean = sum(lrs) / len(lrs)
    var = sum((v - mean) ** 2 for v in lrs) / len(lrs)
    steps = trajectory.get("step") or []
    summary = {
        "optimizer": trajectory.get("optimizer"),
        "steps": len(lrs),
        "last_step": steps[-1] if steps else None,
        "initial_lr": lrs[0],
        "final_lr": lrs[-1],
        "min_lr": min(lrs),
        "max_lr": max(lrs),
        "mean_lr": mean,
        "lr_cv": math.sqrt(var) / mean if mean else math.nan,  # coefficient of variation: lr stability
        "factors": {},
    }
    for key in ("variance_factor", "landscape_factor", "base_scale"):
        values = [float(v) for v in trajectory.get(key) or [] if _is_number(v)]
        if values:
            summary["factors"][key] = {"final": values[-1], "min": min(values), "max": max(values)}
    return summary


def _model_card_data(repo_id: str, eval_results: dict, run_config: dict, optimizer: str):
    from huggingface_hub import EvalResult, ModelCardData

    task_args = run_config.get("task_args") or {}
    task = task_args.get("task") or run_config.get("task") or "unknown"
    task_type, dataset_label, hub_dataset = TASKS.get(task, ("other", f"{task} (not recorded in run_config.json)", None))
    local_files = [Path(f).name for f in (task_args.get("train_file"), task_args.get("validation_file")) if f]
    if local_files:
        dataset_type, dataset_label, hub_dataset = "local-files", ", ".join(local_files), None
    else:
        hub_dataset = task_args.get("dataset_name") or hub_dataset
        dataset_type = hub_dataset or task
    results = [
        EvalResult(
            task_type=task_type,
            dataset_type=dataset_type,
            dataset_name=dataset_label,
            dataset_config=task_args.get("dataset_config_name"),
            metric_type=metric,
            metric_name=metric_name,
            metric_value=eval_results[key],
        )
        for key, (metric, metric_name) in EVAL_METRICS.items()
        if _is_number(eval_results.get(key))
    ]
    tags = ["hf-adaopt", "optimizer", *(t for t in (optimizer, task, task_type) if t not in ("unknown", "other"))]
    return (
        ModelCardData(
            model_name=_repo_name(repo_id),
            library_name="transformers",
            license=LICENSE,
            tags=list(dict.fromkeys(t for t in tags if t)),
            datasets=[hub_dataset] if hub_dataset else None,
            metrics=[r.metric_type for r in results if r.metric_type in ("accuracy", "exact_match", "f1")] or None,
            eval_results=results or None,
        ),
        {"task": task, "task_type": task_type, "dataset_label": dataset_label, "hub_dataset": hub_dataset},
    )


def build_model_card(output_dir: str | os.PathLike, repo_id: str, plots: list[str] | None = None,
                     secrets: tuple[str, ...] = ()):
    """The model card (a `huggingface_hub.ModelCard`) of a run directory, parsed back and checked."""
    from huggingface_hub import ModelCard

    d = Path(output_dir)
    eval_results = _read_json(d / "eval_results.json", {})
    run_config = _read_json(d / store.RUN_CONFIG_FILE, {})
    config = _read_json(d / "config.json", {})
    trajectory = _read_json(d / "lr_trajectory.json")
    if not isinstance(eval_results, dict) or not isinstance(run_config, dict):
        raise ValueError(f"eval_results.json and run_config.json in {str(d)!r} must hold JSON objects")
    optimizer = str(run_config.get("optimizer") or (trajectory or {}).get("optimizer") or "unknown").lower()
    card_data, info = _model_card_data(repo_id, eval_results, run_config, optimizer)
    diagnostics = _lr_summary(trajectory)
    plots = sorted(plots if plots is not None else (p.name for p in d.glob("*.png")))
    # run.py saves eval_results.json with "eval_samples" added; Trainer.evaluate() does not return it.
    eval_samples = eval_results.get("eval_samples")
    eval_dict = _trainer_order({k: v for k, v in eval_results.items() if k != "eval_samples"})
    metric_rows = [(name, eval_results[key]) for key, (_, name) in EVAL_METRICS.items() if _is_number(eval_results.get(key))]
    metric_rows += [
        (key, value)
        for key, value in eval_dict.items()
        if key not in EVAL_METRICS and key not in _SPEED_KEYS and _is_number(value)
    ]
    # Every constructor setting as the optimizer resolved it when run.py recorded them, else what was passed.
    settings = run_config.get("optimizer_defaults") or run_config.get("optimizer_kwargs") or {}
    content = _render(
        _template("model_card.md"),
        card_data=card_data.to_yaml(),
        repo_id=repo_id,
        model_name=_repo_name(repo_id),
        optimizer=optimizer,
        optimizer_class=run_config.get("optimizer_class") or (trajectory or {}).get("optimizer"),
        optimizer_settings=settings,
        settings_resolved=bool(run_config.get("optimizer_defaults")),
        training_args=run_config.get("training_args") or {},
        task_args=_non_default_task_args(run_config.get("task_args") or {}),
        architecture=", ".join(config.get("architectures") or []) or config.get("model_type"),
        usage=_usage_snippet(repo_id, config, info["task_type"]),
        metric_rows=metric_rows,
        eval_dict=repr(eval_dict),
        eval_samples=eval_samples,
        diagnostics=diagnostics,
        plots=plots,
        command=_reproduce_command(run_config.get("command")),
        versions=run_config.get("versions") or {},
        device=run_config.get("device"),
        fmt=_fmt,
        **info,
    )
    card = ModelCard(_redact(content, secrets))  # parses YAML and model-index back: a malformed card fails here
    expected = {key: eval_results[key] for key in EVAL_METRICS if _is_number(eval_results.get(key))}
    got = {f"eval_{r.metric_type}": r.metric_value for r in card.data.eval_results or []}
    if got != expected:
        raise RuntimeError(f"model card model-index {got} does not match eval_results.json {expected}")
    return card


def _non_default_task_args(task_args: dict) -> dict:
    """The task arguments a user set: those that differ from TaskArguments' defaults (the task always shows)."""
    from dataclasses import fields

    from hf_adaopt.tasks.base import TaskArguments

    defaults = {f.name: f.default for f in fields(TaskArguments)}
    return {k: v for k, v in task_args.items() if k == "task" or k not in defaults or v != defaults[k]}


def _trainer_order(metrics: dict) -> dict:
    """eval_results.json (saved with sorted keys) back in the order `Trainer.evaluate()` prints it:
    eval_loss, the compute_metrics keys, the speed metrics, epoch."""
    head = [k for k in ("eval_loss",) if k in metrics]
    tail = [k for k in _SPEED_KEYS if k in metrics]
    middle = [k for k in metrics if k not in head and k not in tail]
    return {k: metrics[k] for k in head + middle + tail}


def _usage_snippet(repo_id: str, config: dict, task_type: str) -> str:
    """How to load the pushed model with transformers' Auto classes; hf-adaopt's own architectures need
    `import hf_adaopt.models` first, which registers them (their model_type is not one transformers knows)."""
    auto = {"question-answering": "AutoModelForQuestionAnswering", "text-classification":
            "AutoModelForSequenceClassification", "image-classification": "AutoModelForImageClassification"}
    cls = auto.get(task_type, "AutoModel")
    load = f"from transformers import {cls}\n\nmodel = {cls}.from_pretrained({repo_id!r})"
    if str(config.get("model_type", "")).startswith("hf_adaopt"):
        return f"import hf_adaopt.models  # pip install hf-adaopt: registers {config['model_type']} with the Auto classes\n{load}"
    return load


def _flat_environment(environment: Any) -> dict:
    """compare_config.json's environment as rows: nested dicts (versions) flattened one level."""
    if not environment:
        return {}
    if not isinstance(environment, dict):
        return {"environment": environment}
    rows = {}
    for key, value in environment.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                rows[sub if key in ("versions", "packages") else f"{key}.{sub}"] = v
        else:
            rows[key] = value
    return rows


def _summary(metric: Any) -> dict | None:
    """{"mean", "std", "ci_low", "ci_high", "n"} of one stats.summarize() dict, None when it has no mean."""
    if not isinstance(metric, dict) or not _is_number(metric.get("mean")):
        return None
    return {k: metric.get(k) if _is_number(metric.get(k)) else None for k in ("mean", "std", "ci_low", "ci_high", "n")}


def summarize_results(results: Any, records: list[dict]) -> dict:
    """The rows of the results card: per (optimizer, lr) group and per AdaOpt-vs-baseline test.

    Read from results.json as `hf_adaopt.report` writes it ("groups": [{optimizer, learning_rate, n,
    metrics: {eval_accuracy: {mean, std, ci_low, ci_high, ...}, ...}}], "comparisons": [{baseline, metric,
    welch_p, welch_p_holm, mwu_p, mwu_p_holm, mean_diff, diff_ci_low, diff_ci_high, hedges_g, cliffs_delta,
    significant, better, ...}]). Missing keys are tolerated; when results.json has no groups, mean/std/n per
    optimizer are computed from results.jsonl and the card points to report.md for intervals and tests.
    """
    results = results if isinstance(results, dict) else {}
    groups, comparisons = [], []
    for g in results.get("groups") or []:
        if not isinstance(g, dict):
            continue
        metrics = g.get("metrics") or {}
        groups.append({
            "optimizer": g.get("optimizer"),
            "learning_rate": g.get("learning_rate"),
            "n": g.get("n"),
            **{key: _summary(metrics.get(key)) for key in ("eval_accuracy", "eval_loss", "train_time_s",
                                                           "steps_to_threshold", "lr_cv")},
        })
    for c in results.get("comparisons") or []:
        if isinstance(c, dict) and c.get("baseline"):
            row = {k: c.get(k) for k in (
                "optimizer", "baseline", "learning_rate", "metric", "metric_label", "mean_diff", "diff_ci_low",
                "diff_ci_high", "welch_p", "welch_p_holm", "mwu_p", "mwu_p_holm", "hedges_g", "cliffs_delta",
                "significant", "better")}
            if row["metric"] == "eval_accuracy":  # differences in accuracy points, like the table above
                row.update({k: row[k] * 100 for k in ("mean_diff", "diff_ci_low", "diff_ci_high") if _is_number(row[k])})
                row["metric_label"] = f"{row['metric_label'] or 'eval accuracy'} (pts)"
            comparisons.append(row)
    source = "results.json"
    if not groups:
        source = "results.jsonl"
        for opt in sorted({str(r.get("optimizer")) for r in records if r.get("optimizer")}):
            row = {"optimizer": opt, "learning_rate": None, "n": 0, "train_time_s": None,
                   "steps_to_threshold": None, "lr_cv": None}
            for key in ("eval_accuracy", "eval_loss"):
                values = [r["eval"][key] for r in records
                          if r.get("optimizer") == opt and _is_number((r.get("eval") or {}).get(key))]
                mean = sum(values) / len(values) if values else None
                std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                       if len(values) > 1 else None)
                row[key] = {"mean": mean, "std": std, "ci_low": None, "ci_high": None, "n": len(values)} if values else None
                row["n"] = max(row["n"], len(values))
            groups.append(row)
    return {"groups": groups, "comparisons": comparisons, "source": source}


def build_results_card(output_dir: str | os.PathLike, repo_id: str, plots: list[str] | None = None,
                       data_files: list[str] | None = None, secrets: tuple[str, ...] = ()):
    """The results card (a `huggingface_hub.DatasetCard`) of a comparison directory."""
    from huggingface_hub import DatasetCard, DatasetCardData

    d = Path(output_dir)
    records = store.load_results(str(d))  # one record per run_id, as the report counts them
    results = _read_json(d / store.RESULTS_JSON, {})
    config = store.load_config(str(d))
    tasks = sorted({str(r["task"]) for r in records if r.get("task")})
    if not tasks:
        tasks = [str(t) for t in ([results.get("task")] if isinstance(results, dict) and results.get("task") else [])]
    table = summarize_results(results, records)
    optimizers = [str(o) for o in (results.get("optimizers") if isinstance(results, dict) else None)
                  or sorted({r["optimizer"] for r in records if r.get("optimizer")})]
    environment = config.get("environment") or (results.get("environment") if isinstance(results, dict) else None)
    command = config.get("command") or (results.get("command") if isinstance(results, dict) else None)
    plots = sorted(plots if plots is not None else (p.name for p in d.glob("*.png")))
    n = len(records)
    size = "n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K"
    card_data = DatasetCardData(
        pretty_name=f"hf-adaopt optimizer comparison: {', '.join(tasks) or 'results'}",
        license=LICENSE,
        tags=list(dict.fromkeys(["hf-adaopt", "optimizer", "benchmark", *tasks, *optimizers])),
        size_categories=[size],
        # The viewer reads results.jsonl (one row per run); results.json is nested aggregates.
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "results.jsonl"}]}],
    )
    content = _render(
        _template("results_card.md"),
        card_data=card_data.to_yaml(),
        repo_id=repo_id,
        tasks=tasks,
        n_runs=n,
        seeds=sorted({r.get("seed") for r in records if r.get("seed") is not None}),
        optimizers=optimizers,
        groups=table["groups"],
        comparisons=table["comparisons"],
        source=table["source"],
        methods={key: (results.get("methods") or {}).get(key) if isinstance(results, dict) else None
                 for key in ("ci", "tests", "effect_sizes", "significance")},
        alpha=results.get("alpha", 0.05) if isinstance(results, dict) else 0.05,
        plots=plots,
        data_files=data_files or [],
        environment=_flat_environment(environment),
        command=_reproduce_command(command) if isinstance(command, str) else None,
        fmt=_fmt,
        num=_num,
        cell=_cell,
    )
    return DatasetCard(_redact(content, secrets))


def _render(template: str, **context) -> str:
    try:
        import jinja2
    except ImportError as err:  # pragma: no cover - jinja2 comes with the hub extra
        raise ImportError("rendering cards needs jinja2: pip install 'hf-adaopt[hub]'") from err
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(**context)


# ---------------------------------------------------------------------------------------------------------
# Staging and publishing
# ---------------------------------------------------------------------------------------------------------
def validate_repo_id(repo_id: str) -> None:
    """ValueError naming `repo_id` and the expected form unless it is 'name' or 'namespace/name'."""
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as _validate

    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"invalid repo id {repo_id!r}: {REPO_ID_HELP}")
    try:
        _validate(repo_id)
    except HFValidationError as err:
        raise ValueError(f"invalid repo id {repo_id!r}: {REPO_ID_HELP}") from err
    if any(part.startswith(("-", ".")) or part.endswith(("-", ".")) for part in repo_id.split("/")):
        raise ValueError(f"invalid repo id {repo_id!r}: {REPO_ID_HELP}")


def _offline_variable() -> str | None:
    """The variable that puts huggingface_hub offline (it reads TRANSFORMERS_OFFLINE too), if one is set."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE"):
            return name
    return None


def check_push_target(repo_id: str, token: str | None = None, token_option: str = "--hub_token") -> None:
    """What a push needs that can be checked without the network, for commands that push after hours of work.

    ValueError for an invalid repo id; HubPushError when offline mode is on or no token is found.
    """
    validate_repo_id(repo_id)
    offline = _offline_variable()
    if offline:
        raise HubPushError(
            f"{offline} is set (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE), which blocks every Hub request, so the "
            "push at the end would fail: unset it, or drop --push_to_hub and push later with `hf-adaopt push`"
        )
    if not token:
        from huggingface_hub import get_token

        if not get_token():  # HF_TOKEN, then the `hf auth login` cache
            raise HubPushError(f"no Hugging Face token found: {TOKEN_HELP.replace('--token', token_option)}")


def _stage(output_dir: Path, kind: str, repo_id: str, staging: Path, secrets: tuple[str, ...]) -> tuple[list[str], Any]:
    """Copy the files to upload into `staging` and write the card there as README.md.

    Files are copied byte for byte, except a text file that holds a Hub token: its copy has the token
    replaced (the local file is left as it is).
    """
    files = _files_to_upload(output_dir)
    names = [p.name for p in files]
    plots = [n for n in names if n.lower().endswith(".png")]
    if kind == "run":
        if not (output_dir / "config.json").is_file() or not any(n in names for n in WEIGHT_FILES):
            raise ValueError(
                f"run directory {str(output_dir)!r} has no saved model (needs config.json and one of "
                f"{', '.join(WEIGHT_FILES)}); train with `hf-adaopt train --output_dir {output_dir}`, which saves it"
            )
        card = build_model_card(output_dir, repo_id, plots=plots, secrets=secrets)
    else:
        card = build_results_card(output_dir, repo_id, plots=plots, data_files=names, secrets=secrets)
    staging.mkdir(parents=True, exist_ok=True)
    for src in files:
        if src.suffix.lower() in _TEXT_SUFFIXES:
            try:
                text = src.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                text = None
            if text is not None and _redact(text, secrets) != text:
                logger.warning("%s holds a Hub token; the uploaded copy has it replaced by %s", src, REDACTED)
                (staging / src.name).write_text(_redact(text, secrets), encoding="utf-8")
                continue
        shutil.copyfile(src, staging / src.name)
    card.save(staging / CARD_NAME)
    return sorted([*names, CARD_NAME]), card


def _endpoint() -> str:
    """HF_ENDPOINT as set now (huggingface_hub reads it once at import), else the library's endpoint."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT or DEFAULT_ENDPOINT).rstrip("/")


def _resolve_token(token: str | None) -> str:
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()  # HF_TOKEN, then the `hf auth login` cache
    if not found:
        raise HubPushError(f"no Hugging Face token found: {TOKEN_HELP}")
    return found


def _is_connection_error(err: BaseException) -> bool:
    names = {c.__name__ for c in type(err).__mro__}
    return isinstance(err, (ConnectionError, TimeoutError)) or bool(
        names & {"TransportError", "ConnectError", "ConnectTimeout", "Timeout", "TimeoutException"}
    )


def _explain(err: BaseException, *, endpoint: str, repo_id: str, repo_type: str, step: str) -> HubPushError:
    """A HubPushError that says what went wrong in `step` and how to fix it."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    where = f"{repo_type} repo {repo_id!r} on {endpoint}"
    if isinstance(err, OfflineModeIsEnabled):
        return HubPushError(f"cannot {step}: HF_HUB_OFFLINE=1 blocks all Hub requests; unset HF_HUB_OFFLINE to push")
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        server_message = (err.server_message or "").strip().splitlines()
        detail = f" (server said: {server_message[0]})" if server_message else ""
        if status == 401:
            return HubPushError(
                f"the token was rejected by {endpoint} (401 Unauthorized) while trying to {step}{detail}: it is "
                f"invalid or expired; {TOKEN_HELP}"
            )
        if status == 403:
            namespace = repo_id.split("/")[0]
            return HubPushError(
                f"permission denied (403 Forbidden): the token lacks write access to {where}{detail}; use a token "
                f"with the 'write' role for namespace {namespace!r} (https://huggingface.co/settings/tokens), or "
                "push to a repo under your own user name"
            )
        if status == 404:
            return HubPushError(
                f"{where} was not found (404) while trying to {step}{detail}; check --repo_id and that the token "
                "can write to it"
            )
        return HubPushError(f"the Hub answered {status} while trying to {step} ({where}){detail}")
    if _is_connection_error(err):
        env = os.environ.get("HF_ENDPOINT")
        return HubPushError(
            f"cannot reach the Hub endpoint {endpoint} ({type(err).__name__}: {err}) while trying to {step}; "
            "check the network connection, or set HF_ENDPOINT to a reachable Hub "
            f"(HF_ENDPOINT is {'set to ' + repr(env) if env else 'unset'})"
        )
    if isinstance(err, ValueError) and "metadata" in str(err).lower():
        return HubPushError(f"the Hub rejected the card's YAML header for {where}: {err}")
    return HubPushError(f"could not {step} ({where}): {type(err).__name__}: {err}")


def _publish(staging: Path, repo_id: str, repo_type: str, *, token: str, private: bool,
             revision: str | None, commit_message: str) -> tuple[str, str, str | None]:
    """whoami, create_repo(exist_ok=True), create_branch when needed, one upload_folder commit."""
    from huggingface_hub import HfApi

    endpoint = _endpoint()
    api = HfApi(endpoint=endpoint, token=token)

    def attempt(step: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HubPushError:
            raise
        except Exception as err:
            raise _explain(err, endpoint=endpoint, repo_id=repo_id, repo_type=repo_type, step=step) from err

    user = attempt("check the token (whoami)", api.whoami)
    if "/" not in repo_id:  # a bare name goes under the token's user, like `hf repo create`
        repo_id = f"{user['name']}/{repo_id}"
    url = attempt("create the repo", api.create_repo, repo_id, repo_type=repo_type, private=private or None,
                  exist_ok=True)
    if revision and revision != "main":
        attempt(f"create branch {revision!r}", api.create_branch, repo_id, branch=revision, repo_type=repo_type,
                exist_ok=True)
    commit = attempt("upload the files", api.upload_folder, repo_id=repo_id, folder_path=staging,
                     repo_type=repo_type, revision=revision, commit_message=commit_message)
    return repo_id, str(url), getattr(commit, "commit_url", None)


def _push(output_dir, repo_id, kind, *, token, private, revision, commit_message, dry_run) -> PushResult:
    output_dir = Path(output_dir)
    found = detect_kind(output_dir)
    if found != kind:
        raise ValueError(f"{str(output_dir)!r} is a {found} directory; use push_{found}() or `hf-adaopt push`")
    validate_repo_id(repo_id)
    repo_type = "model" if kind == "run" else "dataset"
    message = commit_message or f"Upload {'model and card' if kind == 'run' else 'comparison results and card'} with hf-adaopt"
    if dry_run is None:  # fail on a missing token or offline mode before any work
        if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
            raise HubPushError("HF_HUB_OFFLINE is set, which blocks every Hub request: unset it to push "
                               "(or use --dry_run DIR to see what would be uploaded)")
        token = _resolve_token(token)
    secrets = _known_secrets(token)
    if dry_run is not None:
        target = Path(dry_run)
        if target.resolve() == output_dir.resolve() or output_dir.resolve() in target.resolve().parents:
            raise ValueError(f"--dry_run {str(target)!r} is inside the results directory; choose a directory outside it")
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise ValueError(f"--dry_run {str(target)!r} exists and is not empty; choose a new or empty directory")
        files, card = _stage(output_dir, kind, repo_id, target, secrets)
        logger.info("dry run: wrote %d files for %s repo %s to %s", len(files), repo_type, repo_id, target)
        return PushResult(repo_id, repo_type, files, dry_run_dir=str(target), card=card)
    with tempfile.TemporaryDirectory(prefix="hf-adaopt-push-") as tmp:
        files, card = _stage(output_dir, kind, repo_id, Path(tmp) / "upload", secrets)
        repo_id, url, commit_url = _publish(Path(tmp) / "upload", repo_id, repo_type, token=token,
                                            private=private, revision=revision, commit_message=message)
    logger.info("pushed %d files to %s", len(files), url)
    return PushResult(repo_id, repo_type, files, url=url, commit_url=commit_url, card=card)


def push_run(output_dir, repo_id: str, *, token: str | None = None, private: bool = False,
             revision: str | None = None, commit_message: str | None = None,
             dry_run: str | os.PathLike | None = None) -> PushResult:
    """Push a training run's output_dir to a model repo: model files, results, plots and a model card.

    `dry_run=DIR` writes exactly the files that would be uploaded (README.md included) to DIR and contacts
    nothing. Raises ValueError for bad inputs and HubPushError when the Hub refuses or cannot be reached;
    `output_dir` is never modified.
    """
    return _push(output_dir, repo_id, "run", token=token, private=private, revision=revision,
                 commit_message=commit_message, dry_run=dry_run)


def push_comparison(output_dir, repo_id: str, *, token: str | None = None, private: bool = False,
                    revision: str | None = None, commit_message: str | None = None,
                    dry_run: str | os.PathLike | None = None) -> PushResult:
    """Push a comparison's output_dir to a dataset repo: results.jsonl, results.json, report, plots, card."""
    return _push(output_dir, repo_id, "comparison", token=token, private=private, revision=revision,
                 commit_message=commit_message, dry_run=dry_run)


def push(output_dir, repo_id: str, **kwargs) -> PushResult:
    """push_run or push_comparison, whichever `output_dir` is."""
    kind = detect_kind(output_dir)
    return (push_run if kind == "run" else push_comparison)(output_dir, repo_id, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-adaopt push",
        description="Publish a training run (model repo + model card) or a comparison (dataset repo + results "
        "card) to the Hugging Face Hub. Endpoint: HF_ENDPOINT (default https://huggingface.co).",
    )
    parser.add_argument("output_dir", help="a run directory (hf-adaopt train) or a comparison directory (hf-adaopt compare)")
    parser.add_argument("--repo_id", required=True, help="'namespace/name' of the repo to create or update")
    parser.add_argument("--dry_run", metavar="DIR", default=None,
                        help="write the files that would be uploaded (with the rendered card) to DIR; contact nothing")
    parser.add_argument("--private", action="store_true", help="create the repo as private (an existing repo keeps its visibility)")
    parser.add_argument("--revision", default=None, help="branch to commit to (created from main when missing)")
    parser.add_argument("--commit_message", default=None, help="commit message (default: 'Upload ... with hf-adaopt')")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN, then the `hf auth login` cache)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = push(args.output_dir, args.repo_id, token=args.token, private=args.private,
                      revision=args.revision, commit_message=args.commit_message, dry_run=args.dry_run)
    except (ValueError, HubPushError, ImportError) as err:
        print(f"hf-adaopt push: error: {err}", file=sys.stderr)
        if isinstance(err, HubPushError):
            print(f"hf-adaopt push: the local results in {args.output_dir} are unchanged.", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    kind = "model" if result.repo_type == "model" else "dataset"
    if result.dry_run_dir:
        print(f"dry run: {len(result.files)} files for {kind} repo {result.repo_id} written to {result.dry_run_dir}"
              " (nothing was uploaded):")
    else:
        print(f"pushed {len(result.files)} files to {kind} repo {result.repo_id}: {result.url}")
        if result.commit_url:
            print(f"commit: {result.commit_url}")
    for name in result.files:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
