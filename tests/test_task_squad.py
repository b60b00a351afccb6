"""The squad task: SQuAD v1.1 metric, sliding-window features, post-processing, offline errors, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import text_task_fixtures as fixtures
from fixtures.torch_threads import one_thread  # noqa: F401 (autouse)
from transformers import TrainingArguments

from hf_adaopt.lab.tasks import squad
from hf_adaopt.lab.tasks.base import DataUnavailableError, TaskArguments
from hf_adaopt.lab.tasks.squad_metric import exact_match_score, f1_score, normalize_answer, squad_metrics

MAX_SEQ_LENGTH = 64
DOC_STRIDE = 16


# ----------------------------------------------------------------------------------------------- metric


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Denver Broncos", "denver broncos"),  # article and case
        ("a cat, an owl and the dog.", "cat owl and dog"),  # articles anywhere, punctuation
        ("  Santa   Clara,\tCalifornia ", "santa clara california"),  # whitespace
        ("theatre another", "theatre another"),  # articles only as whole words
        ("Levi's Stadium", "levis stadium"),  # punctuation is deleted, not replaced by a space
    ],
)
def test_normalize_answer_removes_articles_punctuation_and_extra_whitespace(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_compares_normalized_answers():
    assert exact_match_score("the Broncos!", "Broncos") == 1.0
    assert exact_match_score("Denver Broncos", "Broncos") == 0.0


def test_f1_counts_token_overlap():
    # SQuAD dev "Which NFL team represented the AFC at Super Bowl 50?": gold "Denver Broncos".
    # "Broncos": precision 1, recall 1/2 -> F1 2/3.
    assert f1_score("Broncos", "Denver Broncos") == pytest.approx(2 / 3)
    # "the cat sat" vs "cat sat on mat": 2 common, precision 2/2, recall 2/4 -> 2/3.
    assert f1_score("the cat sat", "cat sat on mat") == pytest.approx(2 / 3)
    assert f1_score("Carolina Panthers", "Denver Broncos") == 0.0
    # Repeated tokens count only as often as they occur in both.
    assert f1_score("san san francisco", "san francisco") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))


def test_squad_metrics_take_the_best_gold_answer_and_average_in_percent():
    references = [
        {"id": "a", "answers": {"text": ["Denver Broncos", "Broncos"], "answer_start": [0, 7]}},
        {"id": "b", "answers": {"text": ["Santa Clara, California"], "answer_start": [0]}},
    ]
    predictions = [{"id": "a", "prediction_text": "the Broncos"}, {"id": "b", "prediction_text": "Santa Clara"}]
    metrics = squad_metrics(predictions, references)
    # a: EM 1 (second gold), F1 1; b: EM 0, F1 = 2 * 1 * (2/3) / (1 + 2/3) = 0.8.
    assert metrics["exact_match"] == pytest.approx(50.0)
    assert metrics["f1"] == pytest.approx(90.0)
    assert metrics["accuracy"] == pytest.approx(0.5)


def test_squad_metrics_require_a_prediction_for_every_question():
    with pytest.raises(ValueError, match="q2"):
        squad_metrics([{"id": "q1", "prediction_text": "x"}], [
            {"id": "q1", "answers": {"text": ["x"]}}, {"id": "q2", "answers": {"text": ["y"]}}
        ])


# ----------------------------------------------------------------------------------------------- features


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_bert")
    return fixtures.save_tiny_bert(str(directory), fixtures.squad_texts())


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


def _features(tokenizer, examples, for_eval):
    batch = {key: [ex[key] for ex in examples] for key in examples[0]}
    return squad.make_features(batch, tokenizer, MAX_SEQ_LENGTH, DOC_STRIDE, for_eval=for_eval)


def test_long_context_is_split_into_overlapping_windows_that_locate_the_answer(tokenizer):
    long_example = fixtures.squad_examples(1)[0]
    assert len(tokenizer(long_example["question"], long_example["context"])["input_ids"]) > MAX_SEQ_LENGTH
    features = _features(tokenizer, [long_example], for_eval=False)
    n_windows = len(features["input_ids"])
    assert n_windows > 2
    assert all(len(ids) == MAX_SEQ_LENGTH for ids in features["input_ids"])
    answer = long_example["answers"]["text"][0]
    found = 0
    for i in range(n_windows):
        start, end = features["start_positions"][i], features["end_positions"][i]
        if start == 0:  # [CLS]: the answer is not inside this window
            assert end == 0
            continue
        found += 1
        assert tokenizer.decode(features["input_ids"][i][start : end + 1]) == answer.lower()
    assert found >= 1
    assert features["start_positions"][0] == 0  # the answer is near the end, not in the first window


def test_eval_windows_keep_example_id_and_context_offsets_only(tokenizer):
    example = fixtures.squad_examples(2)[1]
    features = _features(tokenizer, [example], for_eval=True)
    assert features["example_id"] == [example["id"]]
    offsets, type_ids = features["offset_mapping"][0], features["token_type_ids"][0]
    attention = features["attention_mask"][0]
    # Context tokens are the second segment without its closing [SEP]; everything else has no offsets.
    context_positions = [k for k, (t, m) in enumerate(zip(type_ids, attention, strict=True)) if t == 1 and m == 1]
    assert [k for k, o in enumerate(offsets) if o is not None] == context_positions[:-1]
    start = features["start_positions"][0]
    assert example["context"][offsets[start][0] : offsets[features["end_positions"][0]][1]] == "Rome"


# ----------------------------------------------------------------------------------------------- post-processing


def _point_logits(features, window, start, end, seq_len=MAX_SEQ_LENGTH):
    # Far below the pointed-at tokens, so that no other pairing can compete.
    start_logits = np.full((len(features["input_ids"]), seq_len), -100.0, dtype=np.float32)
    end_logits = np.full_like(start_logits, -100.0)
    start_logits[window, start] = 10.0
    end_logits[window, end] = 10.0
    return start_logits, end_logits


def test_postprocessing_recovers_the_gold_span_from_a_later_window(tokenizer):
    import datasets

    examples = fixtures.squad_examples(2)
    features = _features(tokenizer, examples, for_eval=True)
    window = next(i for i, (qid, s) in enumerate(zip(features["example_id"], features["start_positions"],
                                                      strict=True)) if qid == "q000" and s > 0)
    assert window > 0
    logits = _point_logits(features, window, features["start_positions"][window], features["end_positions"][window])
    answers = squad.postprocess_qa_predictions(
        datasets.Dataset.from_list(examples), datasets.Dataset.from_dict(features), logits
    )
    assert answers["q000"] == "Paris"
    assert set(answers) == {"q000", "q001"}


def test_postprocessing_skips_question_tokens_and_reversed_spans(tokenizer):
    import datasets

    example = fixtures.squad_examples(2)[1]
    features = _features(tokenizer, [example], for_eval=True)
    gold_start, gold_end = features["start_positions"][0], features["end_positions"][0]
    start_logits, end_logits = _point_logits(features, 0, gold_start, gold_end)
    start_logits[0, 1] = end_logits[0, 2] = 50.0  # a span inside the question (score 100): never an answer
    start_logits[0, gold_end + 1] = 40.0  # with the gold end (score 50) this span is reversed: skipped
    answers = squad.postprocess_qa_predictions(
        datasets.Dataset.from_list([example]), datasets.Dataset.from_dict(features), (start_logits, end_logits)
    )
    assert answers[example["id"]] == "Rome"  # the gold span scores only 20


def test_postprocessing_limits_answer_length(tokenizer):
    import datasets

    example = fixtures.squad_examples(1)[0]
    features = _features(tokenizer, [example], for_eval=True)
    offsets = features["offset_mapping"][0]
    context_tokens = [k for k, o in enumerate(offsets) if o is not None]
    first, last = context_tokens[0], context_tokens[-1]
    start_logits, end_logits = _point_logits(features, 0, first, last)
    end_logits[0, first + 1] = 9.0  # the best span of at most 3 tokens ends here
    answers = squad.postprocess_qa_predictions(
        datasets.Dataset.from_list([example]), datasets.Dataset.from_dict(features), (start_logits, end_logits),
        max_answer_length=3,
    )
    assert answers[example["id"]] == example["context"][offsets[first][0] : offsets[first + 1][1]]


# ----------------------------------------------------------------------------------------------- model loading


def test_unreachable_default_model_names_the_offline_option(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    args = TaskArguments(task="squad", cache_dir=str(tmp_path))
    with pytest.raises(DataUnavailableError) as info:
        squad.load_model_and_tokenizer(args)
    message = str(info.value)
    assert "bert-base-uncased" in message
    assert "--model_name_or_path" in message


def test_missing_local_model_directory_is_a_value_error(tmp_path):
    args = TaskArguments(task="squad", model_name_or_path=str(tmp_path / "no_such_model"))
    with pytest.raises(ValueError, match="no_such_model"):
        squad.load_model_and_tokenizer(args)


def test_doc_stride_must_be_smaller_than_the_window(tmp_path, tiny_bert):
    train, validation = fixtures.write_squad(str(tmp_path), 4, 2)
    args = TaskArguments(task="squad", train_file=train, validation_file=validation, model_name_or_path=tiny_bert,
                         max_seq_length=32, doc_stride=32)
    with pytest.raises(ValueError, match="doc_stride"):
        squad.prepare(args, TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none"))


def test_qa_trainer_refuses_settings_that_split_the_logits(tmp_path, tiny_bert):
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(tiny_bert)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", batch_eval_metrics=True)
    with pytest.raises(ValueError, match="batch_eval_metrics"):
        squad.QuestionAnsweringTrainer(model=model, args=args)


# ----------------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("optimizer", ["adaopt", "adam"])
def test_squad_trains_end_to_end_and_reports_em_f1_accuracy(tmp_path, tiny_bert, optimizer):
    from hf_adaopt.lab.run import OptimizerArguments, run_training

    train, validation = fixtures.write_squad(str(tmp_path))
    task_args = TaskArguments(
        task="squad", train_file=train, validation_file=validation, model_name_or_path=tiny_bert,
        max_seq_length=MAX_SEQ_LENGTH, doc_stride=DOC_STRIDE,
    )
    output_dir = tmp_path / "out"
    training_args = TrainingArguments(
        output_dir=str(output_dir), use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
        max_steps=4, per_device_train_batch_size=8, per_device_eval_batch_size=16, logging_steps=1,
        eval_strategy="no", learning_rate=1e-3,
    )
    result = run_training(task_args, OptimizerArguments(optimizer=optimizer), training_args)

    report = result["eval"]
    for key in ("eval_loss", "eval_accuracy", "eval_exact_match", "eval_f1", "eval_runtime",
                "eval_samples_per_second", "eval_steps_per_second", "epoch"):
        assert key in report, key
    assert np.isfinite(report["eval_loss"])
    assert 0.0 <= report["eval_exact_match"] <= 100.0 and 0.0 <= report["eval_f1"] <= 100.0
    assert report["eval_accuracy"] == pytest.approx(report["eval_exact_match"] / 100.0)
    assert report["eval_f1"] >= report["eval_exact_match"]
    assert result["train"]["train_loss"] > 0
    for name in ("eval_results.json", "train_results.json", "all_results.json", "trainer_state.json",
                 "lr_trajectory.json", "run_config.json", "config.json", "tokenizer.json"):
        assert (output_dir / name).is_file(), name
    saved = json.loads((output_dir / "eval_results.json").read_text())
    assert saved["eval_exact_match"] == pytest.approx(report["eval_exact_match"])
    assert len(json.loads((output_dir / "lr_trajectory.json").read_text())["lr"]) == 4


def test_squad_model_learns_the_fixture(tmp_path, tiny_bert):
    """A few dozen steps take the tiny BERT from chance to answering (the pipeline carries signal end to end)."""
    train, validation = fixtures.write_squad(str(tmp_path))
    task_args = TaskArguments(
        task="squad", train_file=train, validation_file=validation, model_name_or_path=tiny_bert,
        max_seq_length=MAX_SEQ_LENGTH, doc_stride=DOC_STRIDE,
    )
    training_args = TrainingArguments(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
        max_steps=20, per_device_train_batch_size=8, learning_rate=5e-3, lr_scheduler_type="constant", seed=0,
    )
    setup = squad.prepare(task_args, training_args)
    trainer = setup.trainer_cls(
        model=setup.model, args=training_args, train_dataset=setup.train_dataset, eval_dataset=setup.eval_dataset,
        data_collator=setup.data_collator, compute_metrics=setup.compute_metrics,
        processing_class=setup.processing_class, **setup.trainer_kwargs,
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"]
    assert after["eval_f1"] >= 80.0
    # predict() gives the answers themselves, scored the same way.
    prediction = trainer.predict(setup.eval_dataset, setup.trainer_kwargs["eval_examples"])
    assert prediction.metrics["test_exact_match"] == pytest.approx(after["eval_exact_match"])
    assert {p["id"] for p in prediction.predictions} == set(setup.trainer_kwargs["eval_examples"]["id"])
