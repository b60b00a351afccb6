"""Tiny generated datasets (Hub schema) and a tiny BERT for the imdb and squad task tests. Offline, seconds.

- imdb: text,label reviews built from positive/negative word lists (learnable), with HTML like `<br />`.
- squad: id,title,context,question,answers{text,answer_start}; one context is longer than the tests' window
  (64 tokens) with its answer near the end, so that the sliding window is exercised.
- a BertForQuestionAnswering (hidden 32, 2 layers, 2 heads) and a WordPiece BertTokenizerFast trained on the
  fixture texts, saved to a directory for --model_name_or_path / --tokenizer_name.
"""

from __future__ import annotations

import csv
import json
import os
import random

POSITIVE = ["wonderful", "brilliant", "superb", "moving", "delightful", "excellent", "charming", "masterful"]
NEGATIVE = ["awful", "boring", "dreadful", "terrible", "clumsy", "tedious", "horrible", "pointless"]
NEUTRAL = ["the", "film", "movie", "plot", "actors", "story", "was", "and", "really", "quite", "director", "scenes"]


def make_review(label: int, rng: random.Random) -> str:
    words = POSITIVE if label == 1 else NEGATIVE
    tokens = [rng.choice(NEUTRAL) for _ in range(rng.randint(8, 20))]
    for _ in range(rng.randint(2, 4)):
        tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(words))
    text = " ".join(tokens).capitalize() + "."
    if rng.random() < 0.5:  # IMDB reviews carry HTML line breaks
        text = text + "<br /><br />" + rng.choice(words).capitalize() + "!"
    return text


def write_imdb(directory: str, n_train: int = 64, n_eval: int = 32, seed: int = 0) -> tuple[str, str]:
    """train.csv / validation.csv with text,label; labels alternate so any subset has both classes."""
    rng = random.Random(seed)
    paths = []
    for split, n in (("train", n_train), ("validation", n_eval)):
        path = os.path.join(directory, f"imdb_{split}.csv")
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            for i in range(n):
                label = i % 2
                writer.writerow({"text": make_review(label, rng), "label": label})
        paths.append(path)
    return paths[0], paths[1]


COUNTRIES = [
    ("France", "Paris", "the Seine"), ("Italy", "Rome", "the Tiber"), ("Egypt", "Cairo", "the Nile"),
    ("Austria", "Vienna", "the Danube"), ("England", "London", "the Thames"), ("Hungary", "Budapest", "the Danube"),
    ("Germany", "Berlin", "the Spree"), ("Russia", "Moscow", "the Moskva"),
]
# Filler that makes one context far longer than a 64-token window.
LONG_FILLER = (
    "Historians have written many books about the long and complicated development of the region, covering "
    "trade, farming, architecture, music, painting, religion and the daily life of ordinary families over "
    "several centuries of slow change. "
)


def squad_examples(n: int = 32) -> list[dict]:
    """Hub-schema SQuAD examples; example 0 has a long context with its answer near the end."""
    examples = []
    questions = [
        ("What is the capital of {country}?", 1),
        ("Which river flows through {city}?", 2),
    ]
    for i in range(n):
        country, city, river = COUNTRIES[i % len(COUNTRIES)]
        context = f"{city} is the capital of {country}. The river {river} flows through {city}."
        if i == 0:
            context = LONG_FILLER * 3 + context
        template, answer_field = questions[(i // len(COUNTRIES)) % 2]
        question = template.format(country=country, city=city)
        answer = (country, city, river)[answer_field]
        # The answer's position as SQuAD gives it: in the sentence that answers the question.
        if answer_field == 1:
            start = context.index(f"{city} is the capital")
        else:
            start = context.index(f"river {river}") + len("river ")
        assert context[start : start + len(answer)] == answer
        examples.append(
            {
                "id": f"q{i:03d}",
                "title": country,
                "context": context,
                "question": question,
                "answers": {"text": [answer], "answer_start": [start]},
            }
        )
    return examples


def write_squad(directory: str, n_train: int = 32, n_eval: int = 16) -> tuple[str, str]:
    """train/validation jsonl in the Hub schema; the validation split also has an example with 2 gold answers."""
    paths = []
    for split, examples in (("train", squad_examples(n_train)), ("validation", squad_examples(n_eval))):
        if split == "validation":
            extra = dict(examples[1])
            extra["id"] = "q_two_answers"
            text, start = extra["answers"]["text"][0], extra["answers"]["answer_start"][0]
            extra["answers"] = {"text": [text, f"in {text}"], "answer_start": [start, start]}
            examples.append(extra)
        path = os.path.join(directory, f"squad_{split}.jsonl")
        with open(path, "w") as f:
            for example in examples:
                f.write(json.dumps(example) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def save_tiny_bert(directory: str, texts: list[str], max_position_embeddings: int = 128) -> str:
    """A random-init BertForQuestionAnswering and a WordPiece BertTokenizerFast trained on `texts`, saved."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.train_from_iterator(texts, trainer=trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    tokenizer = BertTokenizerFast(vocab=wordpiece.get_vocab(), do_lower_case=True)
    tokenizer.model_max_length = max_position_embeddings
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_position_embeddings,
    )
    BertForQuestionAnswering(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def squad_texts(n: int = 32) -> list[str]:
    return [t for ex in squad_examples(n) for t in (ex["context"], ex["question"])]
