"""`hf-adaopt push`: real pushes through the unmodified huggingface_hub client to a local fake Hub.

The client runs in a subprocess (`python -m hf_adaopt.lab.cli push ...`) with HF_ENDPOINT pointing at
tests/hub_server.py, so it reads the endpoint at import exactly as it does for a user. Offline, CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml
from hub_server import FakeHub  # tests/ is on sys.path (pytest's rootdir-relative import of test modules)
from huggingface_hub import DatasetCard, ModelCard

from hf_adaopt.lab import cards, hub

TOKEN = "hf_alice_write_token"
USER = "alice"
EVAL = {
    "eval_loss": 0.1234567890123,
    "eval_accuracy": 0.9666666666666667,
    "eval_runtime": 0.0512,
    "eval_samples_per_second": 7031.25,
    "eval_steps_per_second": 234.375,
    "epoch": 3.0,
}
COMMAND = "training_scripts/train.py --task digits --optimizer adaopt --output_dir out/d --num_train_epochs 3"
REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- fixtures
def _png(path: Path, width: int = 4, height: int = 3) -> None:
    """A valid RGB PNG (gray), written without matplotlib."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\x80\x80\x80" * width for _ in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def make_run_dir(d: Path) -> Path:
    """A run directory in the formats of CONTRACTS.md: a saved tiny model + the run's JSON files + a plot."""
    import torch

    from hf_adaopt.lab.models import MLPConfig, MLPForImageClassification

    torch.manual_seed(0)
    MLPForImageClassification(MLPConfig(input_dim=64, hidden_sizes=(16,), num_labels=10)).save_pretrained(d)
    (d / "eval_results.json").write_text(json.dumps(EVAL, indent=4, sort_keys=True))
    (d / "train_results.json").write_text(json.dumps({"train_loss": 0.4321, "train_runtime": 1.5, "epoch": 3.0}))
    run_config = {
        "task_args": {"task": "digits", "max_train_samples": None, "augment": False},
        "optimizer": "adaopt",
        "optimizer_kwargs": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
        "training_args": {"learning_rate": 1e-3, "num_train_epochs": 3, "per_device_train_batch_size": 32,
                          "seed": 42, "bf16": False, "gradient_accumulation_steps": 1, "weight_decay": 0.0,
                          "max_grad_norm": 1.0, "lr_scheduler_type": "constant"},
        "command": COMMAND,
        "versions": {"hf_adaopt": "0.1.0", "torch": "2.13.0", "transformers": "5.24.0"},
        "device": "cpu",
    }
    (d / "run_config.json").write_text(json.dumps(run_config, indent=2))
    trajectory = {"step": [1, 2, 3, 4, 5], "lr": [1e-3, 1.7e-3, 2.9e-3, 3.4e-3, 3.1e-3],
                  "variance_factor": [1.0, 0.93, 0.88, 0.81, 0.77], "landscape_factor": [1.0, 1.41, 1.3, 1.05, 0.97],
                  "base_scale": [1e-3, 1.8e-3, 3.2e-3, 4.1e-3, 4.0e-3], "optimizer": "AdaOpt"}
    (d / "lr_trajectory.json").write_text(json.dumps(trajectory))
    _png(d / "eval_accuracy.png")
    (d / "training_args.bin").write_bytes(b"a pickle that must stay local")
    (d / "checkpoint-5").mkdir()
    (d / "checkpoint-5" / "optimizer.pt").write_bytes(b"checkpoint state that must stay local")
    return d


def make_comparison_dir(d: Path) -> Path:
    """A comparison directory: results.jsonl in the contract's format, the rest built by hf_adaopt.lab.report."""
    from hf_adaopt.lab import report

    d.mkdir(parents=True, exist_ok=True)
    lines = []
    for optimizer, accuracies in (("adaopt", (0.951, 0.957, 0.949)), ("adam", (0.929, 0.925, 0.93))):
        for seed, acc in enumerate(accuracies):
            curve = [{"step": s, "epoch": s / 10, "eval_loss": 2.0 / s, "eval_accuracy": acc * min(1.0, s / 20)}
                     for s in (10, 20, 30)]
            lines.append({
                "task": "digits", "optimizer": optimizer, "seed": seed, "learning_rate": 1e-3,
                "run_id": f"digits-{optimizer}-seed{seed}",
                "eval": {"eval_loss": 0.3 - acc / 4, "eval_accuracy": acc, "eval_runtime": 0.1,
                         "eval_samples_per_second": 3600.0, "eval_steps_per_second": 120.0, "epoch": 3.0},
                "train": {"train_runtime": 2.0 + seed, "train_loss": 0.3},
                "eval_curve": curve, "train_loss_curve": [{"step": s, "loss": 1.0 / s} for s in (5, 15, 30)],
                "lr_trajectory": {"step": [1, 2, 3], "lr": [1e-3, 2e-3, 2e-3]},
                "metrics": {"train_time_s": 2.0 + seed, "lr_variance": 2e-7, "lr_cv": 0.3, "lr_mean": 1.7e-3},
                "elapsed_s": 3.0,
            })
    (d / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (d / "compare_config.json").write_text(json.dumps({
        "command": "hf-adaopt compare --task digits --optimizers adaopt,adam --seeds 3",
        "environment": {"versions": {"torch": "2.13.0", "transformers": "5.24.0"}, "device": "cpu"},
    }))
    assert report.main([str(d), "--n_resamples", "500"]) == 0
    return d


def snapshot(d: Path) -> dict[str, str]:
    """Every file under d (recursively) with its sha256: proof that a push left the local results alone."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(home: Path, **overrides: str | None) -> dict[str, str]:
    """A clean Hub environment (no login cache, no HF_TOKEN) plus `overrides` (None removes a variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# Failure paths: (repo id, env overrides, words the message must hold). "CLOSED" is a port nobody listens on.
FAILURES = {
    "no_token": (f"{USER}/x", {"HF_TOKEN": None}, ["no Hugging Face token", "hf auth login", "HF_TOKEN"]),
    "unreachable": (f"{USER}/x", {"HF_ENDPOINT": "CLOSED"},
                    ["cannot reach the Hub endpoint http://127.0.0.1:", "HF_ENDPOINT"]),
    "forbidden_namespace": ("bob/adaopt", {}, ["permission denied", "403", "lacks write access", "'bob/adaopt'",
                                               "write"]),
    # create_repo(exist_ok=True) accepts bob's existing public repo; the upload itself is then refused.
    "forbidden_existing_repo": ("bob/public-model", {}, ["permission denied", "403", "'bob/public-model'"]),
}
NO_CONTACT = ("no_token", "unreachable")


class CliRun:
    def __init__(self, hub: FakeHub, proc: subprocess.Popen):
        self.hub, self.proc = hub, proc
        self.returncode = self.stdout = self.stderr = None

    def wait(self) -> CliRun:
        self.stdout, self.stderr = self.proc.communicate(timeout=180)
        self.returncode = self.proc.returncode
        return self


@pytest.fixture(scope="module")
def cli(tmp_path_factory, run_dir, comparison_dir):
    """Every `python -m hf_adaopt.lab.cli push` of this module, started together (each one imports torch, ~2 s of
    CPU) and each against its own fake Hub, so that the requests and files a hub holds are that case's own."""
    tmp = tmp_path_factory.mktemp("cli")
    cases = {
        "run": ([run_dir, "--repo_id", f"{USER}/adaopt-digits"], {}),
        "dry_run": ([run_dir, "--repo_id", f"{USER}/adaopt-digits", "--dry_run", tmp / "preview"], {}),
        "comparison": ([comparison_dir, "--repo_id", f"{USER}/adaopt-digits-results"], {}),
        **{f"fail_{name}": ([run_dir, "--repo_id", repo_id], env) for name, (repo_id, env, _) in FAILURES.items()},
    }
    before = {"run": snapshot(run_dir), "comparison": snapshot(comparison_dir)}
    runs = {}
    try:
        for name, (args, overrides) in cases.items():
            fake = FakeHub(tokens={TOKEN: USER, "hf_bob_token": "bob"}, orgs={USER: ["adaopt-org"]}).start()
            fake.add_repo("bob/public-model", owner="bob", files={"README.md": b"bob's model"})
            env = {"HF_ENDPOINT": fake.endpoint, "HF_TOKEN": TOKEN, **overrides}
            if env.get("HF_ENDPOINT") == "CLOSED":
                env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
            home = tmp / f"home-{name}"
            home.mkdir()
            proc = subprocess.Popen([sys.executable, "-m", "hf_adaopt.lab.cli", "push", *map(str, args)],
                                    env=cli_env(home, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            runs[name] = CliRun(fake, proc)
        for run in runs.values():
            run.wait()
        yield {"runs": runs, "before": before, "after": {"run": snapshot(run_dir), "comparison": snapshot(comparison_dir)},
               "preview": tmp / "preview"}
    finally:
        for run in runs.values():
            run.hub.stop()
            if run.proc.poll() is None:
                run.proc.kill()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def comparison_dir(tmp_path_factory):
    return make_comparison_dir(tmp_path_factory.mktemp("compare") / "out")


@pytest.fixture(scope="module")
def fake_hub():
    with FakeHub(tokens={TOKEN: USER}, orgs={USER: ["adaopt-org"]}) as server:
        yield server


# ----------------------------------------------------------------------------------------------- a run
def test_push_run_uploads_model_results_and_card_byte_identical(cli, run_dir):
    run = cli["runs"]["run"]
    assert run.returncode == 0, run.stderr
    files = run.hub.files(f"{USER}/adaopt-digits")
    expected = {"config.json", "model.safetensors", "eval_results.json", "train_results.json", "run_config.json",
                "lr_trajectory.json", "eval_accuracy.png"}
    assert set(files) == expected | {"README.md"}
    for name in expected:
        assert files[name] == (run_dir / name).read_bytes(), name
    assert f"pushed 8 files to model repo {USER}/adaopt-digits" in run.stdout


def test_push_run_keeps_local_files_and_leaves_private_ones_local(cli):
    assert cli["after"] == cli["before"]
    files = cli["runs"]["run"].hub.files(f"{USER}/adaopt-digits")
    assert "training_args.bin" not in files
    assert not any(name.startswith("checkpoint-") for name in files)


def test_model_card_yaml_holds_the_measured_eval_results(cli):
    readme = cli["runs"]["run"].hub.files(f"{USER}/adaopt-digits")["README.md"].decode()
    header = yaml.safe_load(readme.split("---")[1])
    assert header["library_name"] == "transformers"
    assert {"hf-adaopt", "optimizer", "adaopt", "digits", "image-classification"} <= set(header["tags"])
    assert header["license"] == "apache-2.0"
    (entry,) = header["model-index"]
    assert entry["name"] == "adaopt-digits"
    (result,) = entry["results"]
    assert result["task"]["type"] == "image-classification"
    assert result["dataset"]["name"].startswith("scikit-learn digits")
    metrics = {m["type"]: m["value"] for m in result["metrics"]}
    assert metrics == {"accuracy": EVAL["eval_accuracy"], "loss": EVAL["eval_loss"]}  # exact floats

    card = ModelCard(readme)  # huggingface_hub's own parser: model-index -> EvalResult
    got = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert got == {"accuracy": EVAL["eval_accuracy"], "loss": EVAL["eval_loss"]}


def test_model_card_body_has_settings_diagnostics_eval_dict_plots_and_command(cli):
    text = ModelCard(cli["runs"]["run"].hub.files(f"{USER}/adaopt-digits")["README.md"].decode()).text
    assert "| `betas` | `[0.9, 0.999]` |" in text and "| `lr_scheduler_type` | `constant` |" in text
    assert "| initial effective lr | 0.001 |" in text
    assert "| max effective lr | 0.0034 |" in text
    assert "| final variance factor (min – max) | 0.77 (0.77 – 1) |" in text
    assert "| final landscape factor (min – max) | 0.97 (0.97 – 1.41) |" in text
    assert repr(EVAL) in text  # the eval dict in the order and format Trainer.evaluate() prints it
    assert "![eval_accuracy.png](eval_accuracy.png)" in text
    assert f"python {COMMAND}" in text


def test_push_talks_the_hub_protocol_with_the_token(cli):
    run = cli["runs"]["run"]
    requests = [r for r in run.hub.requests if "agent-harnesses" not in r.path]  # the client's telemetry
    assert [(r.method, r.path.split("?")[0]) for r in requests] == [
        ("GET", "/api/whoami-v2"),
        ("POST", "/api/repos/create"),
        ("POST", "/api/validate-yaml"),
        ("POST", f"/api/models/{USER}/adaopt-digits/preupload/main"),
        ("POST", f"/api/models/{USER}/adaopt-digits/commit/main"),
    ]
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in requests)
    assert run.hub.unknown_requests() == []
    (commit,) = run.hub.repo(f"{USER}/adaopt-digits").commits
    assert commit["summary"] == "Upload model and card with hf-adaopt"


def test_dry_run_writes_exactly_the_uploaded_files_and_contacts_nothing(cli):
    dry = cli["runs"]["dry_run"]
    assert dry.returncode == 0, dry.stderr
    assert dry.hub.requests == []
    local = {p.name: p.read_bytes() for p in cli["preview"].iterdir()}
    assert local == cli["runs"]["run"].hub.files(f"{USER}/adaopt-digits")
    assert "nothing was uploaded" in dry.stdout


def test_private_revision_and_commit_message_reach_the_hub(fake_hub, run_dir, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    assert hub.main([str(run_dir), "--repo_id", "adaopt-org/digits-dev", "--private", "--revision", "exp/1",
                     "--commit_message", "AdaOpt digits, 3 epochs", "--token", TOKEN]) == 0
    repo = fake_hub.repo("adaopt-org/digits-dev")
    assert repo.private
    assert fake_hub.files("adaopt-org/digits-dev", revision="main") == {}
    assert "README.md" in fake_hub.files("adaopt-org/digits-dev", revision="exp/1")
    assert repo.commits[-1]["summary"] == "AdaOpt digits, 3 epochs" and repo.commits[-1]["revision"] == "exp/1"


def test_push_run_in_process_reads_hf_endpoint_when_called(fake_hub, run_dir, monkeypatch):
    # What train.py --push_to_hub does: huggingface_hub is imported long before the push; HF_ENDPOINT is read now.
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    result = hub.push_run(run_dir, f"{USER}/in-process", token=TOKEN)
    assert result.url == f"{fake_hub.endpoint}/{USER}/in-process"
    assert fake_hub.files(f"{USER}/in-process")["eval_results.json"] == (run_dir / "eval_results.json").read_bytes()


def test_tokens_in_recorded_commands_are_never_uploaded(fake_hub, run_dir, tmp_path, monkeypatch):
    # `train.py --push_to_hub --hub_token ...` records the token in run_config.json's command line.
    leaked = "hf_" + "A1b2C3d4" * 4 + "zz"  # shaped like a real token, not the one used for the push
    d = tmp_path / "run"
    d.mkdir()
    for p in run_dir.iterdir():
        if p.is_file():
            (d / p.name).write_bytes(p.read_bytes())
    config = json.loads((d / "run_config.json").read_text())
    config["command"] = f"{COMMAND} --push_to_hub --hub_token {TOKEN} --hub_model_id x --token={leaked}"
    (d / "run_config.json").write_text(json.dumps(config))
    before = snapshot(d)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    hub.push_run(d, f"{USER}/token-check", token=TOKEN)
    files = fake_hub.files(f"{USER}/token-check")
    assert not any(TOKEN.encode() in data or leaked.encode() in data for data in files.values())
    assert b"--hub_token <redacted>" in files["run_config.json"]
    assert f"python {COMMAND} --push_to_hub --hub_model_id x\n" in files["README.md"].decode()
    assert snapshot(d) == before  # the local file still holds what the user wrote


def test_bare_repo_name_goes_under_the_token_user(fake_hub, run_dir, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    result = hub.push_run(run_dir, "bare-name", token=TOKEN)
    assert result.repo_id == f"{USER}/bare-name"
    assert "README.md" in fake_hub.files(f"{USER}/bare-name")


def test_real_digits_run_pushes_with_its_measured_numbers(fake_hub, tmp_path, monkeypatch, capsys):
    # A real (1-epoch) run through hf_adaopt.lab.run, as `hf-adaopt train` writes it, then dry run and push.
    from hf_adaopt.lab import run

    out = tmp_path / "digits"
    assert run.main(["--task", "digits", "--optimizer", "adaopt", "--output_dir", str(out), "--num_train_epochs", "1",
                     "--report_to", "none", "--disable_tqdm", "True"]) == 0
    capsys.readouterr()
    eval_results = json.loads((out / "eval_results.json").read_text())
    before = snapshot(out)
    preview = hub.push_run(out, f"{USER}/real-digits", dry_run=tmp_path / "preview")
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    pushed = hub.push_run(out, f"{USER}/real-digits", token=TOKEN)
    assert snapshot(out) == before
    assert preview.files == pushed.files
    assert {"model.safetensors", "config.json", "eval_results.json", "lr_trajectory.json", "README.md"} <= set(pushed.files)
    files = fake_hub.files(f"{USER}/real-digits")
    assert files == {p.name: p.read_bytes() for p in (tmp_path / "preview").iterdir()}
    card = ModelCard(files["README.md"].decode())
    got = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert got == {"accuracy": eval_results["eval_accuracy"], "loss": eval_results["eval_loss"]}
    assert "(`AdaOpt`)" in card.text and "## What the optimizer did" in card.text
    recorded = json.loads((out / "run_config.json").read_text())["command"]  # in-process: pytest's argv
    assert f"```bash\n{cards._reproduce_command(recorded)}\n```" in card.text


# ----------------------------------------------------------------------------------------------- a comparison
def test_push_comparison_to_a_dataset_repo_with_results_card(cli, comparison_dir):
    run = cli["runs"]["comparison"]
    assert run.returncode == 0, run.stderr
    files = run.hub.files(f"{USER}/adaopt-digits-results", repo_type="dataset")
    local = {p.name for p in comparison_dir.iterdir() if p.is_file()}
    assert {"results.jsonl", "results.json", "report.md", "compare_config.json"} <= local
    assert any(name.endswith(".png") for name in local)
    assert set(files) == local | {"README.md"}
    for name in local:
        assert files[name] == (comparison_dir / name).read_bytes(), name
    assert f"/api/datasets/{USER}/adaopt-digits-results/commit/main" in [r.path for r in run.hub.requests]

    card = DatasetCard(files["README.md"].decode())
    assert {"hf-adaopt", "optimizer", "digits", "adaopt", "adam"} <= set(card.data.tags)
    assert card.data.configs[0]["data_files"][0]["path"] == "results.jsonl"
    results = json.loads((comparison_dir / "results.json").read_text())
    group = next(g for g in results["groups"] if g["optimizer"] == "adam")
    acc = group["metrics"]["eval_accuracy"]
    cell = f"{acc['mean'] * 100:.2f} ± {acc['std'] * 100:.2f} [{acc['ci_low'] * 100:.2f}, {acc['ci_high'] * 100:.2f}]"
    assert f"| adam | 0.001 | 3 | {cell} |" in card.text
    test = next(c for c in results["comparisons"] if c["metric"] == "eval_accuracy")
    assert f"| {cards._num(test['welch_p'])} | {cards._num(test['welch_p_holm'])} |" in card.text
    assert "hf-adaopt compare --task digits --optimizers adaopt,adam --seeds 3" in card.text
    assert "| device | cpu |" in card.text


def test_comparison_dry_run_matches_the_upload_list(comparison_dir, tmp_path):
    result = hub.push_comparison(comparison_dir, f"{USER}/cmp", dry_run=tmp_path / "preview")
    assert result.repo_type == "dataset"
    assert sorted(p.name for p in (tmp_path / "preview").iterdir()) == result.files
    assert result.files == sorted([p.name for p in comparison_dir.iterdir() if p.is_file()] + ["README.md"])


def test_results_card_counts_each_run_once_like_the_report(comparison_dir, tmp_path):
    d = tmp_path / "rerun"
    d.mkdir()
    for name in ("results.json", "report.md", "compare_config.json"):
        (d / name).write_bytes((comparison_dir / name).read_bytes())
    lines = (comparison_dir / "results.jsonl").read_text().splitlines()
    (d / "results.jsonl").write_text("\n".join([*lines, lines[0]]) + "\n")  # a run recorded twice (a rerun)
    result = hub.push_comparison(d, f"{USER}/rerun", dry_run=tmp_path / "preview")
    assert f"Results of `hf-adaopt compare`: {len(lines)} training runs" in result.card.text
    assert json.loads((d / "results.json").read_text())["n_runs"] == len(lines)


# ----------------------------------------------------------------------------------------------- failures
@pytest.mark.parametrize("case", sorted(FAILURES))
def test_push_failure_names_problem_and_fix_and_keeps_local_files(case, cli):
    run = cli["runs"][f"fail_{case}"]
    assert run.returncode != 0
    for word in FAILURES[case][2]:
        assert word in run.stderr, (word, run.stderr)
    assert "Traceback" not in run.stderr
    assert cli["after"] == cli["before"]
    if case in NO_CONTACT:
        assert run.hub.requests == []  # failed before contacting anything
    if case.startswith("forbidden"):
        assert run.hub.repo("bob/public-model").commits == []
        assert ("model", "bob/adaopt") not in run.hub.repos


def test_rejected_token_names_the_fix(fake_hub, run_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_token")
    assert hub.main([str(run_dir), "--repo_id", f"{USER}/x"]) == 3  # the push failed, local files kept
    err = capsys.readouterr().err
    assert "the token was rejected" in err and "401" in err and "hf auth login" in err and "HF_TOKEN" in err
    assert ("model", f"{USER}/x") not in fake_hub.repos


@pytest.mark.parametrize("repo_id", ["alice/bad--name", "alice/models/x", "-alice/x", "alice/x.", "a" * 97, "alice/x y", ""])
def test_invalid_repo_ids_are_refused_before_anything_is_staged(repo_id, run_dir, tmp_path, capsys):
    assert hub.main([str(run_dir), f"--repo_id={repo_id}", "--dry_run", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert f"invalid repo id {repo_id!r}" in err and "namespace/name" in err
    assert not (tmp_path / "p").exists()


def test_hf_hub_offline_is_named_before_any_request(fake_hub, run_dir, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n_before = len(fake_hub.requests)
    with pytest.raises(hub.HubPushError, match="HF_HUB_OFFLINE is set.*unset it"):
        hub.push_run(run_dir, f"{USER}/offline", token=TOKEN)
    assert fake_hub.requests[n_before:] == []


# ----------------------------------------------------------------------------------------------- inputs
def test_directory_that_is_neither_run_nor_comparison_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a run directory .* nor a comparison directory"):
        hub.detect_kind(tmp_path)


def test_run_without_saved_model_is_refused(run_dir, tmp_path):
    for name in ("eval_results.json", "run_config.json"):
        (tmp_path / name).write_bytes((run_dir / name).read_bytes())
    with pytest.raises(ValueError, match="has no saved model"):
        hub.push_run(tmp_path, f"{USER}/x", dry_run=tmp_path.parent / "preview-no-model")


def test_dry_run_refuses_a_non_empty_directory_and_the_results_directory(run_dir, tmp_path):
    (tmp_path / "old.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not empty"):
        hub.push_run(run_dir, f"{USER}/x", dry_run=tmp_path)
    with pytest.raises(ValueError, match="inside the results directory"):
        hub.push_run(run_dir, f"{USER}/x", dry_run=run_dir / "preview")
    assert (tmp_path / "old.txt").read_text() == "keep me"
    assert not (run_dir / "preview").exists()


def test_reproduce_command_is_pasteable():
    assert cards._reproduce_command("training_scripts/train.py --task digits") == "python training_scripts/train.py --task digits"
    assert cards._reproduce_command("/venv/bin/hf-adaopt train --task mnist") == "hf-adaopt train --task mnist"
    assert cards._reproduce_command("/x/hf_adaopt/lab/cli.py compare --seeds 5") == "hf-adaopt compare --seeds 5"


def test_unreachable_is_recognised_by_type_not_by_class_name():
    """A connection failure of the Hub client (httpx or its fork httpx2, requests) reads as "cannot reach";
    an unrelated exception that merely shares a class name does not."""
    from hf_adaopt.lab.tasks.base import _http_clients

    class ConnectError(Exception):  # same name as the client's, another type
        pass

    for client in _http_clients():
        assert hub._is_connection_error(client.ConnectError("refused"))
        assert hub._is_connection_error(client.ConnectTimeout("slow"))
    assert hub._is_connection_error(ConnectionRefusedError())
    assert not hub._is_connection_error(ConnectError("refused"))
    assert not hub._is_connection_error(ValueError("bad repo id"))
