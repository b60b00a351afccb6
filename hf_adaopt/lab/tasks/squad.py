"""SQuAD v1.1 extractive question answering with `AutoModelForQuestionAnswering` (default bert-base-uncased).

Preprocessing and post-processing follow transformers' `examples/pytorch/question-answering` (run_qa.py,
utils_qa.py, trainer_qa.py): a context longer than `max_seq_length` is split into overlapping windows
(`doc_stride` tokens of overlap) with `truncation="only_second"`; training windows get the answer's start/end
token (or the [CLS] token when the answer lies outside the window); evaluation windows also keep their
example id and the character offsets of their context tokens, so that the best-scoring span over all windows of
an example maps back to answer text. Exact match and F1 use the official v1.1 normalization
(`hf_adaopt.lab.tasks.squad_metric`), offline; `eval_accuracy` is exact match / 100.

    accelerate launch training_scripts/train.py --task squad --model_name_or_path bert-base-uncased \
        --optimizer adaopt --output_dir out/squad
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Mapping

import numpy as np
from transformers import Trainer

from hf_adaopt.core.logs import get_logger
from hf_adaopt.lab.tasks.base import (
    DataUnavailableError,
    TaskArguments,
    TaskSetup,
    hub_endpoint,
    hub_errors,
    load_raw_datasets,
)
from hf_adaopt.lab.tasks.squad_metric import squad_metrics

logger = get_logger(__name__)

DEFAULT_DATASET = "rajpurkar/squad"
# what a model card says of this task (model-index task type, dataset name); its Hub id is DEFAULT_DATASET
HUB_TASK_TYPE = "question-answering"
DATASET_LABEL = "SQuAD v1.1"
DEFAULT_EPOCHS = 3
DEFAULT_MODEL = "bert-base-uncased"
DEFAULT_MAX_SEQ_LENGTH = 384
N_BEST_SIZE = 20  # candidate start and end tokens per window (run_qa's default)
MAX_ANSWER_LENGTH = 30  # longest answer in tokens (run_qa's default)

# Columns of the evaluation features that only the post-processing reads; the model never sees them.
_POSTPROCESS_COLUMNS = ("example_id", "offset_mapping")


# --------------------------------------------------------------------------------------------------------------
# Preprocessing: examples -> windows (features)
# --------------------------------------------------------------------------------------------------------------


def make_features(examples: Mapping, tokenizer, max_seq_length: int, doc_stride: int, for_eval: bool) -> dict:
    """Tokenize a batch of examples into overlapping windows with answer start/end token positions.

    Every window gets `start_positions`/`end_positions` (the [CLS] index when the answer is not fully inside the
    window), so that the model returns a loss in evaluation too. With `for_eval`, windows also keep `example_id`
    and an `offset_mapping` that is None outside the context, for `postprocess_qa_predictions`.
    """
    pad_on_right = tokenizer.padding_side == "right"
    context_index = 1 if pad_on_right else 0
    # Some questions start with whitespace, which wastes window space (run_qa does the same).
    questions = [q.lstrip() for q in examples["question"]]
    contexts = examples["context"]
    tokenized = tokenizer(
        questions if pad_on_right else contexts,
        contexts if pad_on_right else questions,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    offset_mapping = tokenized.pop("offset_mapping")
    start_positions, end_positions, example_ids, eval_offsets = [], [], [], []
    for i, offsets in enumerate(offset_mapping):
        input_ids = tokenized["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        sequence_ids = tokenized.sequence_ids(i)
        sample_index = sample_mapping[i]
        answers = examples["answers"][sample_index]
        start, end = cls_index, cls_index
        if len(answers["answer_start"]) > 0:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            # First and last context token of this window.
            token_start = 0
            while sequence_ids[token_start] != context_index:
                token_start += 1
            token_end = len(input_ids) - 1
            while sequence_ids[token_end] != context_index:
                token_end -= 1
            if offsets[token_start][0] <= start_char and offsets[token_end][1] >= end_char:
                while token_start < len(offsets) and offsets[token_start][0] <= start_char:
                    token_start += 1
                start = token_start - 1
                while offsets[token_end][1] >= end_char:
                    token_end -= 1
                end = token_end + 1
        start_positions.append(start)
        end_positions.append(end)
        if for_eval:
            example_ids.append(examples["id"][sample_index])
            eval_offsets.append(
                [tuple(o) if sequence_ids[k] == context_index else None for k, o in enumerate(offsets)]
            )
    tokenized["start_positions"] = start_positions
    tokenized["end_positions"] = end_positions
    if for_eval:
        tokenized["example_id"] = example_ids
        tokenized["offset_mapping"] = eval_offsets
    return tokenized


# --------------------------------------------------------------------------------------------------------------
# Post-processing: window logits -> answer text per example
# --------------------------------------------------------------------------------------------------------------


def postprocess_qa_predictions(
    examples,
    features,
    predictions: tuple[np.ndarray, np.ndarray],
    n_best_size: int = N_BEST_SIZE,
    max_answer_length: int = MAX_ANSWER_LENGTH,
) -> dict[str, str]:
    """Map start/end logits of every window to the best answer text of each example (SQuAD v1: no null answer).

    `examples` need `id` and `context`; `features` need `example_id` and `offset_mapping` (None outside the
    context), in the order of the rows of `predictions` = (start_logits, end_logits), each [n_features, seq_len].
    A span's score is start_logit + end_logit; spans must lie in the context, end after they start, and be at
    most `max_answer_length` tokens long. Returns {example id: answer text} ("" when no valid span exists).
    """
    if len(predictions) != 2:
        raise ValueError(f"predictions must be (start_logits, end_logits), got {len(predictions)} arrays.")
    all_start_logits, all_end_logits = (np.asarray(p) for p in predictions)
    if all_start_logits.shape[0] != len(features):
        raise ValueError(
            f"Got {all_start_logits.shape[0]} rows of logits for {len(features)} features; they must match."
        )
    # Whole columns at once: per-row access to an Arrow dataset is slow.
    feature_example_ids = features["example_id"]
    feature_offsets = features["offset_mapping"]
    example_ids = examples["id"]
    contexts = examples["context"]
    index_of_example = {qid: i for i, qid in enumerate(example_ids)}
    features_per_example = defaultdict(list)
    for i, qid in enumerate(feature_example_ids):
        features_per_example[index_of_example[qid]].append(i)

    answers = {}
    for example_index, qid in enumerate(example_ids):
        best_score, best_span = -math.inf, None
        for feature_index in features_per_example[example_index]:
            start_logits = all_start_logits[feature_index]
            end_logits = all_end_logits[feature_index]
            offsets = feature_offsets[feature_index]
            start_indexes = np.argsort(start_logits)[-1 : -n_best_size - 1 : -1].tolist()
            end_indexes = np.argsort(end_logits)[-1 : -n_best_size - 1 : -1].tolist()
            for s in start_indexes:
                for e in end_indexes:
                    # Out of range (logits padded across batches), not in the context, or not a valid span.
                    if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    score = float(start_logits[s] + end_logits[e])
                    if score > best_score:
                        best_score, best_span = score, (offsets[s][0], offsets[e][1])
        answers[qid] = "" if best_span is None else contexts[example_index][best_span[0] : best_span[1]]
    return answers


def post_process_function(examples, features, predictions):
    """Trainer hook: logits -> `EvalPrediction` of `{"id", "prediction_text"}` / `{"id", "answers"}` lists."""
    from transformers import EvalPrediction

    answers = postprocess_qa_predictions(examples, features, predictions)
    formatted = [{"id": qid, "prediction_text": text} for qid, text in answers.items()]
    references = [{"id": qid, "answers": ans} for qid, ans in zip(examples["id"], examples["answers"], strict=True)]
    return EvalPrediction(predictions=formatted, label_ids=references)


def compute_metrics(eval_prediction) -> dict[str, float]:
    """exact_match and f1 in percent and accuracy = exact_match / 100, from post-processed predictions."""
    return squad_metrics(eval_prediction.predictions, eval_prediction.label_ids)


# --------------------------------------------------------------------------------------------------------------
# Trainer: evaluation = prediction loop with the loss + post-processing + SQuAD metric
# --------------------------------------------------------------------------------------------------------------


class QuestionAnsweringTrainer(Trainer):
    """`Trainer` whose `evaluate()`/`predict()` turn window logits into answers and score them.

    Like transformers' examples/pytorch/question-answering/trainer_qa.py, but the evaluation features carry
    start/end positions, so the report keeps `eval_loss` beside `eval_exact_match`, `eval_f1` and
    `eval_accuracy`. `eval_dataset` holds the features (with `example_id` and `offset_mapping`, which are dropped
    before they reach the model); `eval_examples` holds the raw examples they came from.
    """

    def __init__(self, *args, eval_examples=None, post_process_function=None, **kwargs):
        super().__init__(*args, **kwargs)
        # The post-processing needs every window's logits as one array per start/end.
        if self.args.batch_eval_metrics or not self.args.eval_do_concat_batches:
            raise ValueError(
                f"{type(self).__name__} needs batch_eval_metrics=False and eval_do_concat_batches=True (got "
                f"{self.args.batch_eval_metrics} and {self.args.eval_do_concat_batches}): answers are extracted "
                "from all windows of a question at once."
            )
        self.eval_examples = eval_examples
        self.post_process_function = post_process_function

    def evaluate(self, eval_dataset=None, eval_examples=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        eval_dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        eval_examples = self.eval_examples if eval_examples is None else eval_examples
        self._memory_tracker.start()
        metrics, _ = self._loop_and_postprocess(
            eval_dataset, eval_examples, ignore_keys, metric_key_prefix, "Evaluation"
        )
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self._memory_tracker.stop_and_update_metrics(metrics)
        return metrics

    def predict(self, predict_dataset, predict_examples=None, ignore_keys=None, metric_key_prefix: str = "test"):
        """Answers (`{"id", "prediction_text"}` list) and metrics for `predict_dataset` built by `make_features`."""
        from transformers.trainer_utils import PredictionOutput

        if predict_examples is None:
            raise ValueError("predict() needs predict_examples: the raw examples that predict_dataset was built from.")
        self._memory_tracker.start()
        metrics, eval_prediction = self._loop_and_postprocess(
            predict_dataset, predict_examples, ignore_keys, metric_key_prefix, "Prediction"
        )
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics)
        self._memory_tracker.stop_and_update_metrics(metrics)
        return PredictionOutput(
            predictions=eval_prediction.predictions, label_ids=eval_prediction.label_ids, metrics=metrics
        )

    def _loop_and_postprocess(self, features, examples, ignore_keys, metric_key_prefix, description):
        from transformers.trainer_utils import speed_metrics

        if features is None or examples is None:
            raise ValueError(f"{type(self).__name__} needs evaluation features and the examples they came from.")
        if isinstance(features, dict):
            raise TypeError(f"{type(self).__name__} evaluates one dataset at a time, not a dict of datasets.")
        dataloader = self.get_eval_dataloader(features.remove_columns(list(_POSTPROCESS_COLUMNS)))
        start_time = time.time()
        # The base loop would call compute_metrics on raw logits; the metric needs post-processed text.
        compute_metrics, self.compute_metrics = self.compute_metrics, None
        try:
            output = self.evaluation_loop(
                dataloader,
                description=description,
                prediction_loss_only=False,
                ignore_keys=ignore_keys,
                metric_key_prefix=metric_key_prefix,
            )
        finally:
            self.compute_metrics = compute_metrics
        metrics = dict(output.metrics)  # holds <prefix>_loss
        eval_prediction = None
        if self.post_process_function is not None:
            eval_prediction = self.post_process_function(examples, features, output.predictions)
            if compute_metrics is not None:
                for key, value in compute_metrics(eval_prediction).items():
                    metrics[f"{metric_key_prefix}_{key}"] = value
        total_batch_size = self.args.eval_batch_size * self.args.world_size
        metrics.update(
            speed_metrics(
                metric_key_prefix,
                start_time,
                num_samples=output.num_samples,
                num_steps=math.ceil(output.num_samples / total_batch_size),
            )
        )
        return metrics, eval_prediction


# --------------------------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------------------------


def _looks_local(name: str) -> bool:
    # A Hub id is "name" or "org/name"; anything path-like is meant as a local directory.
    return name.startswith((".", "~")) or os.path.isabs(name) or name.count("/") > 1


def _model_unavailable(name: str, exc: BaseException) -> DataUnavailableError:
    endpoint = hub_endpoint()
    return DataUnavailableError(
        f"The model {name!r} could not be loaded from the Hugging Face Hub at {endpoint} (no network, "
        f"HF_HUB_OFFLINE, or no such repo): {type(exc).__name__}: {exc}\n"
        "Offline: pass a local directory with --model_name_or_path <dir> (a model saved with save_pretrained(), "
        "e.g. bert-base-uncased downloaded on a machine with access, or a small BERT built from a BertConfig) "
        "and, when its tokenizer is elsewhere, --tokenizer_name <dir>; use local data with --train_file/"
        "--validation_file; or run the built-in task that needs no download: --task digits."
    )


def load_model_and_tokenizer(task_args: TaskArguments):
    """`AutoModelForQuestionAnswering` and its fast tokenizer, with a clear error when the Hub is unreachable."""
    from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer, PreTrainedTokenizerFast

    model_name = task_args.model_name_or_path or DEFAULT_MODEL
    tokenizer_name = task_args.tokenizer_name or model_name
    for what, name in (("--model_name_or_path", model_name), ("--tokenizer_name", tokenizer_name)):
        if _looks_local(name) and not os.path.isdir(os.path.expanduser(name)):
            raise ValueError(f"{what} {name!r} looks like a local path but is not a directory.")
    loaded = {}
    # The config first: one small file, so an unreachable Hub fails before anything large is attempted.
    for key, name, load in (
        ("config", model_name, lambda n: AutoConfig.from_pretrained(n, cache_dir=task_args.cache_dir)),
        ("tokenizer", tokenizer_name, lambda n: AutoTokenizer.from_pretrained(n, cache_dir=task_args.cache_dir)),
    ):
        try:
            loaded[key] = load(os.path.expanduser(name))
        except hub_errors() as exc:
            if os.path.isdir(os.path.expanduser(name)):
                raise  # a local directory that is broken: the original error says what is wrong
            raise _model_unavailable(name, exc) from exc
    tokenizer = loaded["tokenizer"]
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ValueError(
            f"The squad task needs a fast tokenizer (offset mappings); {tokenizer_name!r} loads "
            f"{type(tokenizer).__name__}. Pass --tokenizer_name with a tokenizer.json-based tokenizer."
        )
    try:
        model = AutoModelForQuestionAnswering.from_pretrained(
            os.path.expanduser(model_name), config=loaded["config"], cache_dir=task_args.cache_dir
        )
    except hub_errors() as exc:
        if os.path.isdir(os.path.expanduser(model_name)):
            raise
        raise _model_unavailable(model_name, exc) from exc
    return model, tokenizer


def prepare(task_args: TaskArguments, training_args) -> TaskSetup:
    """SQuAD windows for training and evaluation, a QA model and a Trainer that reports EM/F1/accuracy."""
    model, tokenizer = load_model_and_tokenizer(task_args)
    max_seq_length = task_args.max_seq_length or DEFAULT_MAX_SEQ_LENGTH
    if max_seq_length > tokenizer.model_max_length:
        logger.warning(
            "max_seq_length %d exceeds the tokenizer's model_max_length %d; using %d.",
            max_seq_length, tokenizer.model_max_length, tokenizer.model_max_length,
        )
        max_seq_length = tokenizer.model_max_length
    if not 0 <= task_args.doc_stride < max_seq_length:
        raise ValueError(
            f"doc_stride {task_args.doc_stride} must be >= 0 and smaller than max_seq_length {max_seq_length} "
            "(the windows overlap by doc_stride tokens); lower --doc_stride."
        )

    raw = load_raw_datasets(task_args, DEFAULT_DATASET)
    for split in ("train", "validation"):
        missing = {"id", "context", "question", "answers"} - set(raw[split].column_names)
        if missing:
            raise ValueError(
                f"The {split} data lacks the SQuAD columns {sorted(missing)} (has {raw[split].column_names}); "
                "expected id, title, context, question, answers{text, answer_start}."
            )

    def featurize(split: str, for_eval: bool):
        columns = raw[split].column_names
        with training_args.main_process_first(desc=f"squad {split} windows"):
            return raw[split].map(
                make_features,
                batched=True,
                remove_columns=columns,
                fn_kwargs={
                    "tokenizer": tokenizer,
                    "max_seq_length": max_seq_length,
                    "doc_stride": task_args.doc_stride,
                    "for_eval": for_eval,
                },
                desc=f"Windows of the {split} split",
            )

    train_features = featurize("train", for_eval=False)
    eval_features = featurize("validation", for_eval=True)
    logger.info(
        "squad: %d train examples -> %d windows, %d eval examples -> %d windows (max_seq_length %d, stride %d)",
        len(raw["train"]), len(train_features), len(raw["validation"]), len(eval_features),
        max_seq_length, task_args.doc_stride,
    )
    from transformers import default_data_collator

    return TaskSetup(
        model=model,
        train_dataset=train_features,
        eval_dataset=eval_features,
        data_collator=default_data_collator,  # windows are padded to max_seq_length
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
        trainer_cls=QuestionAnsweringTrainer,
        trainer_kwargs={"eval_examples": raw["validation"], "post_process_function": post_process_function},
    )


__all__ = [
    "DEFAULT_DATASET",
    "DEFAULT_EPOCHS",
    "DEFAULT_MODEL",
    "QuestionAnsweringTrainer",
    "compute_metrics",
    "make_features",
    "post_process_function",
    "postprocess_qa_predictions",
    "prepare",
]
