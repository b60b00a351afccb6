"""The imdb task: the trained tokenizer, data handling, end to end with each built-in optimizer, save/reload."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import text_task_fixtures as fixtures
from fixtures.torch_threads import one_thread  # noqa: F401 (autouse)
from transformers import AutoTokenizer, TrainingArguments

from hf_adaopt.lab import registry
from hf_adaopt.lab.tasks import imdb
from hf_adaopt.lab.tasks.base import TaskArguments


@pytest.fixture(scope="module")
def imdb_files(tmp_path_factory):
    return fixtures.write_imdb(str(tmp_path_factory.mktemp("imdb")))


def _training_args(output_dir, **overrides):
    values = dict(
        output_dir=str(output_dir), use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
        per_device_train_batch_size=16, per_device_eval_batch_size=32, logging_steps=1, seed=0,
    )
    values.update(overrides)
    return TrainingArguments(**values)


# ----------------------------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def trained_tokenizer():
    import random

    rng = random.Random(0)
    return imdb.train_tokenizer([fixtures.make_review(i % 2, rng) for i in range(200)], max_length=16)


def test_trained_tokenizer_lowercases_strips_html_and_wraps_in_cls_sep(trained_tokenizer):
    tokens = trained_tokenizer.tokenize("A WONDERFUL film<br /><br />Boring!")
    assert tokens == ["a", "wonderful", "film", "boring", "!"]
    encoded = trained_tokenizer("wonderful film")["input_ids"]
    assert encoded[0] == trained_tokenizer.cls_token_id and encoded[-1] == trained_tokenizer.sep_token_id


def test_trained_tokenizer_keeps_comparison_signs_that_are_not_tags(trained_tokenizer):
    # "<" / ">" without a tag name are text, not HTML (they become [UNK] in this tiny vocabulary).
    assert len(trained_tokenizer.tokenize("film < movie > plot")) == 5


def test_trained_tokenizer_has_the_special_tokens_with_pad_zero(trained_tokenizer):
    assert trained_tokenizer.pad_token_id == 0
    for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
        assert token in trained_tokenizer.get_vocab()
    assert trained_tokenizer.tokenize("zyzzyva") == ["[UNK]"]


def test_trained_tokenizer_truncates_to_max_seq_length(trained_tokenizer):
    ids = trained_tokenizer(" ".join(["film"] * 100), truncation=True)["input_ids"]
    assert len(ids) == 16


# ----------------------------------------------------------------------------------------------- data


def test_subsets_are_random_so_a_label_sorted_split_keeps_both_classes(tmp_path):
    # The Hub's imdb splits hold all negative reviews first; the first N rows would be one class.
    train, validation = str(tmp_path / "train.csv"), str(tmp_path / "validation.csv")
    for path in (train, validation):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            for label in (0, 1):
                for i in range(40):
                    writer.writerow({"text": f"{'good' if label else 'bad'} film number {i}", "label": label})
    args = TaskArguments(task="imdb", train_file=train, validation_file=validation, max_train_samples=20,
                         max_eval_samples=10)
    setup = imdb.prepare(args, _training_args(tmp_path / "out"))
    assert len(setup.train_dataset) == 20 and len(setup.eval_dataset) == 10
    assert set(setup.train_dataset["labels"]) == {0, 1}
    # The same subset whatever --seed: runs of a comparison see the same data.
    again = imdb.prepare(args, _training_args(tmp_path / "out", seed=123))
    assert again.train_dataset["input_ids"] == setup.train_dataset["input_ids"]


def test_prepare_builds_padded_batches_and_a_bilstm_sized_to_the_vocabulary(imdb_files, tmp_path):
    from hf_adaopt.lab.models import BiLSTMAttentionForSequenceClassification

    train, validation = imdb_files
    args = TaskArguments(task="imdb", train_file=train, validation_file=validation, max_seq_length=12)
    setup = imdb.prepare(args, _training_args(tmp_path / "out"))
    assert isinstance(setup.model, BiLSTMAttentionForSequenceClassification)
    assert setup.model.config.vocab_size == len(setup.processing_class)
    assert setup.model.config.num_labels == 2
    assert max(len(ids) for ids in setup.train_dataset["input_ids"]) == 12
    batch = setup.data_collator([setup.train_dataset[i] for i in range(4)])
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert set(batch) >= {"input_ids", "attention_mask", "labels"}
    metrics = setup.compute_metrics(
        type("P", (), {"predictions": np.array([[2.0, 0.0], [0.0, 1.0]]), "label_ids": np.array([0, 0])})
    )
    assert metrics == {"accuracy": 0.5}


def test_missing_text_column_is_a_value_error(tmp_path):
    path = str(tmp_path / "bad.csv")
    with open(path, "w") as f:
        f.write("review,label\ngood,1\nbad,0\n")
    args = TaskArguments(task="imdb", train_file=path, validation_file=path)
    with pytest.raises(ValueError, match="text"):
        imdb.prepare(args, _training_args(tmp_path / "out"))


def test_tokenizer_name_uses_a_saved_tokenizer(imdb_files, tmp_path, trained_tokenizer):
    trained_tokenizer.save_pretrained(tmp_path / "tok")
    train, validation = imdb_files
    args = TaskArguments(task="imdb", train_file=train, validation_file=validation, tokenizer_name=str(tmp_path / "tok"))
    setup = imdb.prepare(args, _training_args(tmp_path / "out"))
    assert setup.processing_class.get_vocab() == trained_tokenizer.get_vocab()


# ----------------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("optimizer", registry.BUILTIN)
def test_imdb_trains_end_to_end_with_each_builtin_optimizer(imdb_files, tmp_path, optimizer):
    from hf_adaopt.lab.run import OptimizerArguments, run_training

    train, validation = imdb_files
    output_dir = tmp_path / "out"
    task_args = TaskArguments(task="imdb", train_file=train, validation_file=validation, max_seq_length=32)
    result = run_training(
        task_args, OptimizerArguments(optimizer=optimizer),
        _training_args(output_dir, max_steps=4, eval_strategy="no", learning_rate=1e-3),
    )
    report = result["eval"]
    for key in ("eval_loss", "eval_accuracy", "eval_runtime", "eval_samples_per_second",
                "eval_steps_per_second", "epoch"):
        assert key in report, key
    assert np.isfinite(report["eval_loss"]) and 0.0 <= report["eval_accuracy"] <= 1.0
    for name in ("eval_results.json", "train_results.json", "all_results.json", "trainer_state.json",
                 "lr_trajectory.json", "run_config.json", "config.json", "model.safetensors",
                 "tokenizer.json", "tokenizer_config.json"):
        assert (output_dir / name).is_file(), name
    assert json.loads((output_dir / "run_config.json").read_text())["optimizer"] == optimizer
    assert len(result["lr_trajectory"]["lr"]) == 4


def test_imdb_fixture_is_learnable(imdb_files, tmp_path):
    """The generated reviews carry signal through tokenizer, collator and model: accuracy well above chance."""
    from hf_adaopt.lab.run import OptimizerArguments, run_training

    train, validation = imdb_files
    task_args = TaskArguments(task="imdb", train_file=train, validation_file=validation, max_seq_length=32)
    result = run_training(
        task_args, OptimizerArguments(optimizer="adam"),
        _training_args(tmp_path / "out", num_train_epochs=20, eval_strategy="no", learning_rate=3e-3),
    )
    assert result["eval"]["eval_accuracy"] >= 0.85


def test_saved_model_and_tokenizer_reload_and_agree(imdb_files, tmp_path):
    import torch

    from hf_adaopt.lab.models import BiLSTMAttentionForSequenceClassification
    from hf_adaopt.lab.run import OptimizerArguments, run_training

    train, validation = imdb_files
    output_dir = tmp_path / "out"
    task_args = TaskArguments(task="imdb", train_file=train, validation_file=validation, max_seq_length=32)
    run_training(task_args, OptimizerArguments(optimizer="adaopt"),
                 _training_args(output_dir, max_steps=2, eval_strategy="no"))
    setup = imdb.prepare(task_args, _training_args(tmp_path / "again"))

    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    review = "A WONDERFUL movie<br /><br />really superb"
    assert tokenizer(review)["input_ids"] == setup.processing_class(review)["input_ids"]
    assert tokenizer.tokenize(review) == ["a", "wonderful", "movie", "really", "superb"]
    model = BiLSTMAttentionForSequenceClassification.from_pretrained(output_dir).eval()
    batch = tokenizer([review, "awful boring film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
