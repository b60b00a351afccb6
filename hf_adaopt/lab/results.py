"""The results store: the one owner of what a comparison's (or the suite's) output directory holds.

    <output_dir>/results.jsonl         one JSON line per finished run, appended as each run ends
    <output_dir>/compare_config.json   the command, the grid and the environment (rewritten atomically)
    <output_dir>/results.json          the analysis (`hf_adaopt.lab.report`), rewritten atomically
    <output_dir>/report.md             the report, rewritten atomically
    <output_dir>/runs/<run_id>/        one training run's directory, with its run_config.json

results.jsonl survives a kill at any byte: each line goes out in one write on an O_APPEND descriptor, under an
flock (shards share the file), and is fsynced; a partial last line left by a killed writer is cut off before the
next append or resume (its run is then missing and runs again). Readers keep one record per run_id, the last.

Also here: the JSON-safe form of recorded values, the environment recorded with runs and comparisons, the
training arguments recorded with each run, and the configuration hash that keys resumed runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import re
import subprocess
from dataclasses import asdict
from importlib import metadata
from typing import Any

from hf_adaopt.core.logs import get_logger

logger = get_logger(__name__)

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "compare_config.json"
SUITE_CONFIG_FILE = "suite_config.json"  # in place of compare_config.json in a `hf-adaopt suite` directory
RESULTS_JSON = "results.json"
REPORT_FILE = "report.md"
RUN_CONFIG_FILE = "run_config.json"
RUNS_SUBDIR = "runs"

# The training settings a comparison stores with every run (its "config", shown in the report). The grid
# coordinates (learning rate, seed) are stored beside it, so they are not in it.
RECORDED_TRAINING_ARGS = (
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "max_grad_norm",
    "lr_scheduler_type",
    "warmup_steps",
    "bf16",
    "eval_strategy",
    "eval_steps",
    "logging_steps",
)
# The training settings a single run records in its run_config.json (and its model card shows): what the run
# was, the learning rate, seed and world size included.
RUN_RECORDED_TRAINING_ARGS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "seed",
    "bf16",
    "gradient_accumulation_steps",
    "weight_decay",
    "max_grad_norm",
    "lr_scheduler_type",
    "warmup_steps",  # with the schedule: adamw-cosine's warmup (a fraction of the steps when below 1)
    "world_size",
)

# TrainingArguments fields that do not change what a run computes, or that compare sets per run: left out of
# the configuration hash, so that e.g. a different --report_to does not invalidate finished runs.
HASH_EXCLUDED = {
    "output_dir",
    "logging_dir",
    "run_name",
    "seed",
    "learning_rate",
    "push_to_hub",
    "hub_model_id",
    "hub_strategy",
    "hub_token",
    "hub_private_repo",
    "hub_always_push",
    "hub_revision",
    "report_to",
    "disable_tqdm",
    "log_level",
    "log_level_replica",
    "log_on_each_node",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "save_only_model",
    "save_safetensors",
    "save_on_each_node",
    "trackio_space_id",
    "project",
    "local_rank",
    "logging_first_step",
    "skip_memory_metrics",
}


# ---------------------------------------------------------------------------------------------------------
# values


def json_safe(value: Any) -> Any:
    """`value` as strict JSON: nan/inf -> None, numpy and one-element torch scalars -> Python numbers, enums ->
    their value, tuples -> lists, dict keys -> str, anything else -> str()."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float):  # numpy's float64 too
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    size = value.numel() if callable(getattr(value, "numel", None)) else getattr(value, "size", None)
    if size == 1 and hasattr(value, "item"):  # numpy scalars, 0-d arrays and one-element tensors
        return json_safe(value.item())
    return getattr(value, "value", str(value))  # enums -> their value


def config_hash(config: dict) -> str:
    """The first 10 hex digits of the SHA-256 of `config` as sorted JSON: the key of a run's configuration."""
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def canonical_config(task_args, opt_args, training_args) -> dict:
    """What determines a run's result apart from its grid coordinates (optimizer, seed, lr): what is hashed."""
    targs = {k: v for k, v in training_args.to_dict().items() if k not in HASH_EXCLUDED and "token" not in k}
    task = {k: v for k, v in asdict(task_args).items() if k != "cache_dir"}
    opt = {k: v for k, v in asdict(opt_args).items() if k != "optimizer"}
    return {"task_args": task, "optimizer_args": opt, "training_args": targs}


def recorded_config(task_args, opt_args, training_args) -> dict:
    """The compact configuration stored with every run of a comparison (shown in the report)."""
    targs = {k: getattr(training_args, k) for k in RECORDED_TRAINING_ARGS if hasattr(training_args, k)}
    targs = {k: (v.value if hasattr(v, "value") else v) for k, v in targs.items()}
    task = {k: v for k, v in asdict(task_args).items() if v is not None and k != "cache_dir"}
    opt = {k: v for k, v in asdict(opt_args).items() if k != "optimizer"}
    return {**task, **opt, **targs}


def recorded_run_args(training_args) -> dict:
    """The training settings of one run's run_config.json (`RUN_RECORDED_TRAINING_ARGS`), JSON-safe."""
    return json_safe({name: getattr(training_args, name) for name in RUN_RECORDED_TRAINING_ARGS})


# ---------------------------------------------------------------------------------------------------------
# environment

# distribution names of the packages whose versions a comparison records
VERSIONED = (
    "hf-adaopt",
    "torch",
    "transformers",
    "accelerate",
    "datasets",
    "numpy",
    "scipy",
    "prodigyopt",
    "dadaptation",
    "schedulefree",
    "dog-optimizer",
)
# run_config.json's "versions": key -> distribution (the keys are the import names, as first recorded)
RUN_VERSIONED = {
    "hf_adaopt": "hf-adaopt",
    "torch": "torch",
    "transformers": "transformers",
    "accelerate": "accelerate",
    "datasets": "datasets",
}


def _versions(names: dict[str, str]) -> dict[str, str]:
    """{"python": ..., key: version of the distribution} for the installed distributions among `names`."""
    versions = {"python": platform.python_version()}
    for key, dist in names.items():
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[key] = metadata.version(dist)
    return versions


# The checkout hf_adaopt runs from: the repository root, two levels above hf_adaopt/lab/.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _git_revision(src: str = SOURCE_ROOT) -> str | None:
    """`<short hash>[+dirty]` of the hf_adaopt source checkout, when it is one (AdaOpt changes between commits)."""
    if not os.path.exists(os.path.join(src, ".git")):  # a directory, or a file in a git worktree
        return None

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", src, *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def environment() -> dict:
    """Versions (of the installed distributions), device and platform, recorded by a comparison or the suite."""
    versions = _versions({dist: dist for dist in VERSIONED})
    revision = _git_revision()
    if revision:
        versions["hf-adaopt git"] = revision
    return {"versions": versions, "device": device_description(), "platform": platform.platform()}


def device_description() -> str:
    """The device, with torch's intra-op thread count on CPU: taken again after each run, because a task may set
    the threads (digits runs with one), so the count before the first run is not what the runs used."""
    import torch  # the store's readers (report, hub) do not need torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    cpu = platform.processor() or platform.machine()
    return f"cpu: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def run_environment(training_args) -> tuple[dict[str, str], str]:
    """run_config.json's package versions and one-line device description of a run's `training_args.device`."""
    import torch

    device = training_args.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        threads = torch.get_num_threads()
        name = f"{name}, {threads} thread{'s' if threads != 1 else ''}"
    return _versions(RUN_VERSIONED), f"{device.type} ({name}) x{training_args.world_size}"


# ---------------------------------------------------------------------------------------------------------
# writing


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: a reader sees the old file or the new one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_config(output_dir: str, payload: dict) -> None:
    """compare_config.json, with every command that has written to the directory in "commands"."""
    old = load_config(output_dir)
    commands = list(old.get("commands", []))
    if payload["command"] not in commands:
        commands.append(payload["command"])
    payload = {**payload, "commands": commands}
    write_atomic(os.path.join(output_dir, CONFIG_FILE), json.dumps(payload, indent=1, default=str))


@contextlib.contextmanager
def _locked(fd: int):
    """An exclusive flock on fd while the block runs: shards append to one results.jsonl."""
    try:
        import fcntl  # POSIX only

        fcntl.flock(fd, fcntl.LOCK_EX)
    except (ImportError, OSError):  # no flock (Windows, some network filesystems): single writer assumed
        fcntl = None
    try:
        yield
    finally:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _cut_partial_line(fd: int) -> bytes:
    """Truncate what follows the last newline of the file (a line whose write was killed); return those bytes."""
    size = os.fstat(fd).st_size
    end = size
    while end > 0:  # backwards in blocks: results.jsonl lines are ~100 KB, the file can be large
        start = max(0, end - 65536)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end == size:
        return b""
    tail = os.pread(fd, size - end, end)
    os.ftruncate(fd, end)
    os.fsync(fd)
    return tail


def describe_partial_line(tail: bytes) -> str:
    """What a cut-off results line held, for the warning: its run_id when the cut came after it."""
    found = re.search(rb'"run_id": "([^"]+)"', tail)
    what = f"run {found.group(1).decode(errors='replace')}" if found else "a run whose id was not yet written"
    return f"{len(tail)} bytes of {what}"


def repair_results(path: str) -> str | None:
    """Cut a partial last line (a kill during its write) off results.jsonl; None, or what was dropped.

    Every line that ends in a newline is whole (append_record writes each in one write), so the cut loses only the
    interrupted run, which is then missing from the file and runs again.
    """
    if not os.path.isfile(path):
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        with _locked(fd):  # a shard that is writing holds the lock: its line is not cut
            tail = _cut_partial_line(fd)
    finally:
        os.close(fd)
    if not tail:
        return None
    dropped = describe_partial_line(tail)
    logger.warning(
        "%s ended in a partial line (a write interrupted by a kill): dropped %s; that run will run again",
        path,
        dropped,
    )
    return dropped


def append_record(path: str, record: dict) -> None:
    """Append one run's JSON line so that a kill at any byte leaves only whole lines and at most one partial last line.

    The line goes out in one write on an O_APPEND descriptor and is fsynced before the next run starts; under the
    lock a partial line left by a killed writer is cut off first, so the new line never continues it.
    """
    data = (json.dumps(record, allow_nan=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        with _locked(fd):
            tail = _cut_partial_line(fd)
            if tail:
                logger.warning("%s: dropped a partial last line (%s) before appending", path, describe_partial_line(tail))
            written = os.write(fd, data)
            while written < len(data):  # a short write happens on a full disk only; the next append cuts it off
                written += os.write(fd, data[written:])
            os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------
# reading


def load_results(output_dir: str) -> list[dict]:
    """The runs in `<output_dir>/results.jsonl`, one per run_id (the last line wins), in file order.

    A partial last line (a run killed while writing it) is skipped with a warning; other invalid lines raise
    ValueError naming the file, the line and the fix.
    """
    path = os.path.join(output_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: `hf-adaopt report` needs a directory written by `hf-adaopt compare`"
        )
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc}): not a file written by `hf-adaopt compare`") from None
    lines = text.splitlines()
    runs: dict[str, dict] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not text.endswith("\n"):  # still being written, or its writer was killed
                logger.warning(
                    "%s: skipping a partial last line (%d characters, an interrupted write); `hf-adaopt compare` with "
                    "the same arguments cuts it off and runs that run again",
                    path,
                    len(line),
                )
                continue
            raise ValueError(
                f"{path}, line {i + 1}: not valid JSON; delete that line (its run then runs again on the next "
                "`hf-adaopt compare`) or repair it"
            ) from None
        if not isinstance(rec, dict) or not isinstance(rec.get("run_id"), str):
            raise ValueError(
                f"{path}, line {i + 1}: not a run record of hf-adaopt compare (no \"run_id\"); delete that line, or "
                "point to a directory written by hf-adaopt compare"
            )
        runs[rec["run_id"]] = rec
    return list(runs.values())


def load_config(output_dir: str) -> dict:
    """compare_config.json of a comparison ({} when there is none)."""
    path = os.path.join(output_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}); delete it (`hf-adaopt compare` writes it again, the runs in "
            "results.jsonl are kept) or pass --overwrite_output_dir to start over"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a JSON object; delete it (`hf-adaopt compare` writes it again)")
    return config


def finished_run_ids(output_dir: str) -> set[str]:
    """The run_ids in results.jsonl, after cutting off a partial last line (that run is not finished)."""
    path = os.path.join(output_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        return set()
    repair_results(path)
    return {r["run_id"] for r in load_results(output_dir)}
