"""The cards `hf-adaopt push` publishes: a run's model card and a comparison's results card.

Rendered from the Jinja templates in `hf_adaopt.model_cards` (model_card.md, results_card.md) and parsed back with
`huggingface_hub`'s card classes, so that a malformed card fails here rather than on the Hub. A run's card reads its
directory (eval_results.json, run_config.json, config.json, lr_trajectory.json); a comparison's card reads the
results store (`hf_adaopt.lab.results`: results.jsonl, one record per run as the report counts them, results.json and
compare_config.json). Hub tokens found in a card are replaced by `REDACTED`. Publishing is `hf_adaopt.lab.hub`.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import re
import shlex
from dataclasses import fields
from pathlib import Path
from typing import Any

from hf_adaopt.lab import results as store
from hf_adaopt.lab import stats
from hf_adaopt.lab.tasks import TASK_NAMES, get_task
from hf_adaopt.lab.tasks.base import TaskArguments

LICENSE = "apache-2.0"
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
REDACTED = "<redacted>"


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({err}); rerun the command that wrote it") from err


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
    if Path(head).name in ("hf-adaopt", "cli.py") or head.endswith("hf_adaopt/lab/cli.py"):
        argv[0] = "hf-adaopt"
    elif head.endswith(".py") and Path(head).name != "python":
        argv.insert(0, "python")
    return shlex.join(argv)


def _redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with every Hub token in it (the known `secrets` and anything shaped like one) replaced."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return _TOKEN_PATTERN.sub(REDACTED, text)


def _repo_name(repo_id: str) -> str:
    return repo_id.split("/")[-1]


def _template(name: str) -> str:
    return importlib.resources.files("hf_adaopt.model_cards").joinpath(name).read_text(encoding="utf-8")


def _lr_summary(trajectory: dict | None) -> dict | None:
    """What the optimizer did, from lr_trajectory.json: effective-lr range and the final AdaOpt factors."""
    if not trajectory or not trajectory.get("lr"):
        return None
    lrs = [float(v) for v in trajectory["lr"] if _is_number(v)]
    if not lrs:
        return None
    stability = stats.lr_stability(lrs)
    steps = trajectory.get("step") or []
    summary = {
        "optimizer": trajectory.get("optimizer"),
        "steps": len(lrs),
        "last_step": steps[-1] if steps else None,
        "initial_lr": lrs[0],
        "final_lr": lrs[-1],
        "min_lr": min(lrs),
        "max_lr": max(lrs),
        "mean_lr": stability["mean"],
        "lr_cv": stability["cv"],  # coefficient of variation: lr stability
        "factors": {},
    }
    for key in ("variance_factor", "landscape_factor", "base_scale"):
        values = [float(v) for v in trajectory.get(key) or [] if _is_number(v)]
        if values:
            summary["factors"][key] = {"final": values[-1], "min": min(values), "max": max(values)}
    return summary


def _task_metadata(task: str) -> tuple[str, str, str | None]:
    """(Hub task type, readable dataset name, Hub dataset id or None) of a task, from its module: `HUB_TASK_TYPE`,
    `DATASET_LABEL` and `DEFAULT_DATASET`; ("other", ..., None) for a task without them."""
    if task in TASK_NAMES:
        module = get_task(task)  # imported only for a card: a task module may import torch or transformers
        if hasattr(module, "HUB_TASK_TYPE"):
            return module.HUB_TASK_TYPE, module.DATASET_LABEL, module.DEFAULT_DATASET
    return "other", f"{task} (not recorded in run_config.json)", None


def _model_card_data(repo_id: str, eval_results: dict, run_config: dict, optimizer: str):
    from huggingface_hub import EvalResult, ModelCardData

    task_args = run_config.get("task_args") or {}
    task = task_args.get("task") or run_config.get("task") or "unknown"
    task_type, dataset_label, hub_dataset = _task_metadata(task)
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
    `import hf_adaopt.lab.models` first, which registers them (their model_type is not one transformers knows)."""
    auto = {"question-answering": "AutoModelForQuestionAnswering", "text-classification":
            "AutoModelForSequenceClassification", "image-classification": "AutoModelForImageClassification"}
    cls = auto.get(task_type, "AutoModel")
    load = f"from transformers import {cls}\n\nmodel = {cls}.from_pretrained({repo_id!r})"
    if str(config.get("model_type", "")).startswith("hf_adaopt"):
        return f"import hf_adaopt.lab.models  # pip install hf-adaopt: registers {config['model_type']} with the Auto classes\n{load}"
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


def summarize_results(results: Any) -> dict:
    """The rows of the results card: per (optimizer, lr) group and per AdaOpt-vs-baseline test.

    Read from results.json as `hf_adaopt.lab.report` writes it ("groups": [{optimizer, learning_rate, n,
    metrics: {eval_accuracy: {mean, std, ci_low, ci_high, ...}, ...}}], "comparisons": [{baseline, metric,
    welch_p, welch_p_holm, mwu_p, mwu_p_holm, mean_diff, diff_ci_low, diff_ci_high, hedges_g, cliffs_delta,
    significant, better, ...}]). Missing keys are tolerated.
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
    return {"groups": groups, "comparisons": comparisons}


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
    table = summarize_results(results)
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
