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
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_adaopt.core.logs import get_logger
from hf_adaopt.lab import results as store
from hf_adaopt.lab.cards import REDACTED, _redact, build_model_card, build_results_card
from hf_adaopt.lab.tasks.base import offline_variable, unreachable_errors

logger = get_logger(__name__)

RUN_MARKERS = ("eval_results.json", store.RUN_CONFIG_FILE)
COMPARISON_MARKERS = (store.RESULTS_FILE, store.RESULTS_JSON, store.REPORT_FILE)
# A model repo without weights is useless: one of these must sit next to config.json.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Never uploaded: the card is re-rendered, and training_args.bin is a pickle with local paths in it.
SKIPPED_FILES = ("README.md", "training_args.bin")
CARD_NAME = "README.md"
DEFAULT_ENDPOINT = "https://huggingface.co"


_TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".txt", ".csv", ".yaml", ".yml", ".log")

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


def _files_to_upload(directory: Path) -> list[Path]:
    """Top-level regular files, minus the card (re-rendered), pickles of local settings and hidden/private files.

    Sub-directories (checkpoint-*, runs/, per-run outputs of a comparison) stay local.
    """
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.name not in SKIPPED_FILES and not p.name.startswith((".", "_"))
    )


def _known_secrets(token: str | None) -> tuple[str, ...]:
    """The tokens this process could push with: never to be published."""
    found = {token, os.environ.get("HF_TOKEN")}
    try:
        from huggingface_hub import get_token

        found.add(get_token())  # HF_TOKEN or the login cache: a local read
    except Exception:  # best effort: the pattern still catches standard tokens
        pass
    return tuple(sorted(t for t in found if t and len(t) >= 8))


# ---------------------------------------------------------------------------------------------------------
# Cards
# ---------------------------------------------------------------------------------------------------------


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


def check_push_target(repo_id: str, token: str | None = None, token_option: str = "--hub_token") -> None:
    """What a push needs that can be checked without the network, for commands that push after hours of work.

    ValueError for an invalid repo id; HubPushError when offline mode is on or no token is found.
    """
    validate_repo_id(repo_id)
    offline = offline_variable("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # huggingface_hub reads both
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
    return isinstance(err, unreachable_errors())


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
        # one exit code per kind of failure, as in `train` and `compare`: 2 a bad argument or a missing extra
        # (nothing was contacted), 3 the push itself failed (the local files are kept)
        return 3 if isinstance(err, HubPushError) else 2
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
