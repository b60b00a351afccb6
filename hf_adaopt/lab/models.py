"""The experiment's small models, as `PreTrainedModel` subclasses with their configs.

Each saves and loads with `save_pretrained` / `from_pretrained` and returns `ImageClassifierOutput` or
`SequenceClassifierOutput` with `loss` when `labels` are given, so `transformers.Trainer` trains them as is.
Importing this module registers them with transformers' Auto classes: after `import hf_adaopt.lab.models`,
`AutoModel.from_pretrained(saved_dir)` (and `AutoModelForImageClassification` / `...ForSequenceClassification`)
loads them.

- `MLPForImageClassification`: flatten -> 128-128-64 ReLU -> classes (mnist `--model mlp`, digits).
- `SimpleCNNForImageClassification`: two conv/ReLU/max-pool blocks -> dense 128 -> classes (mnist, digits cnn).
- `VGGForImageClassification`: VGG16-style stacks of 3x3 conv + BatchNorm + ReLU, width configurable (cifar10).
- `BiLSTMAttentionForSequenceClassification`: embedding -> bidirectional LSTM -> additive attention pooling
  -> classes (imdb).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput, SequenceClassifierOutput

__all__ = [
    "BiLSTMAttentionConfig",
    "BiLSTMAttentionForSequenceClassification",
    "MLPConfig",
    "MLPForImageClassification",
    "SimpleCNNConfig",
    "SimpleCNNForImageClassification",
    "VGGConfig",
    "VGGForImageClassification",
]


def _classification_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    if labels is None:
        return None
    # Cross-entropy in fp32: under bf16 autocast the logits arrive in bf16.
    return nn.functional.cross_entropy(logits.float(), labels.long().view(-1))


class _SmallPreTrainedModel(PreTrainedModel):
    """Shared init: Glorot-uniform dense layers, He-normal convolutions, zero biases (Keras/torchvision-like).

    The library default (normal, std 0.02) suits transformers, not small ReLU nets trained from scratch.
    """

    base_model_prefix = "model"
    supports_gradient_checkpointing = False

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)


# ----------------------------------------------------------------------------------------------- MLP


class MLPConfig(PretrainedConfig):
    """Fully connected classifier over flattened inputs (`input_dim` = channels x height x width)."""

    model_type = "hf_adaopt_mlp"

    def __init__(self, input_dim=784, hidden_sizes=(128, 128, 64), num_labels=10, dropout=0.0, **kwargs):
        if input_dim <= 0:
            raise ValueError(f"input_dim must be positive, got {input_dim}")
        self.input_dim = input_dim
        self.hidden_sizes = list(hidden_sizes)
        self.dropout = dropout
        super().__init__(num_labels=num_labels, **kwargs)


class MLPForImageClassification(_SmallPreTrainedModel):
    config_class = MLPConfig
    main_input_name = "pixel_values"

    def __init__(self, config: MLPConfig):
        super().__init__(config)
        layers: list[nn.Module] = []
        width = config.input_dim
        for hidden in config.hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = hidden
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        logits = self.classifier(self.body(pixel_values.flatten(1)))
        return ImageClassifierOutput(loss=_classification_loss(logits, labels), logits=logits)


# ----------------------------------------------------------------------------------------------- simple CNN


class SimpleCNNConfig(PretrainedConfig):
    """Conv(3x3) -> ReLU -> MaxPool(2) per entry of `channels`, then dense `hidden_size` -> dropout -> classes."""

    model_type = "hf_adaopt_simple_cnn"

    def __init__(
        self, num_channels=1, image_size=28, channels=(32, 64), hidden_size=128, num_labels=10, dropout=0.5, **kwargs
    ):
        channels = list(channels)
        if image_size < 2 ** len(channels):
            raise ValueError(
                f"image_size {image_size} is too small for {len(channels)} pooling stages; use fewer channels entries"
            )
        self.num_channels = num_channels
        self.image_size = image_size
        self.channels = channels
        self.hidden_size = hidden_size
        self.dropout = dropout
        super().__init__(num_labels=num_labels, **kwargs)


class SimpleCNNForImageClassification(_SmallPreTrainedModel):
    config_class = SimpleCNNConfig
    main_input_name = "pixel_values"

    def __init__(self, config: SimpleCNNConfig):
        super().__init__(config)
        layers: list[nn.Module] = []
        in_ch, size = config.num_channels, config.image_size
        for out_ch in config.channels:
            # padding=1 keeps the size through the conv; the pool halves it
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            in_ch, size = out_ch, size // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(in_ch * size * size, config.hidden_size), nn.ReLU(), nn.Dropout(config.dropout)
        )
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        logits = self.classifier(self.head(self.features(pixel_values)))
        return ImageClassifierOutput(loss=_classification_loss(logits, labels), logits=logits)


# ----------------------------------------------------------------------------------------------- VGG


class VGGConfig(PretrainedConfig):
    """VGG16 layout: stages of `stage_depths` 3x3 convs (+BatchNorm+ReLU), each followed by a 2x2 max-pool.

    Stage widths are `base_width * stage_multipliers` (VGG16: 64 x [1, 2, 4, 8, 8] with depths [2, 2, 3, 3, 3]);
    a small `base_width` (e.g. 4) gives the same architecture at test size. The classifier is
    dense `classifier_hidden` -> BatchNorm -> ReLU -> dropout -> classes, the usual CIFAR-10 VGG head.
    """

    model_type = "hf_adaopt_vgg"

    def __init__(
        self,
        num_channels=3,
        image_size=32,
        base_width=64,
        stage_depths=(2, 2, 3, 3, 3),
        stage_multipliers=(1, 2, 4, 8, 8),
        classifier_hidden=512,
        num_labels=10,
        dropout=0.5,
        **kwargs,
    ):
        stage_depths, stage_multipliers = list(stage_depths), list(stage_multipliers)
        if len(stage_depths) != len(stage_multipliers):
            raise ValueError(
                f"stage_depths {stage_depths} and stage_multipliers {stage_multipliers} must have the same length"
            )
        if image_size < 2 ** len(stage_depths):
            raise ValueError(f"image_size {image_size} is too small for {len(stage_depths)} pooling stages")
        if base_width <= 0:
            raise ValueError(f"base_width must be positive, got {base_width}")
        self.num_channels = num_channels
        self.image_size = image_size
        self.base_width = base_width
        self.stage_depths = stage_depths
        self.stage_multipliers = stage_multipliers
        self.classifier_hidden = classifier_hidden
        self.dropout = dropout
        super().__init__(num_labels=num_labels, **kwargs)


class VGGForImageClassification(_SmallPreTrainedModel):
    config_class = VGGConfig
    main_input_name = "pixel_values"

    def __init__(self, config: VGGConfig):
        super().__init__(config)
        layers: list[nn.Module] = []
        in_ch, size = config.num_channels, config.image_size
        for depth, mult in zip(config.stage_depths, config.stage_multipliers, strict=True):
            out_ch = config.base_width * mult
            for _ in range(depth):
                # no conv bias: BatchNorm's shift replaces it
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]
                in_ch = out_ch
            layers.append(nn.MaxPool2d(2))
            size //= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_ch * size * size, config.classifier_hidden),
            nn.BatchNorm1d(config.classifier_hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
        )
        self.classifier = nn.Linear(config.classifier_hidden, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        logits = self.classifier(self.head(self.features(pixel_values)))
        return ImageClassifierOutput(loss=_classification_loss(logits, labels), logits=logits)


# ----------------------------------------------------------------------------------------------- BiLSTM + attention


class BiLSTMAttentionConfig(PretrainedConfig):
    """Embedding -> `num_layers` bidirectional LSTM -> additive attention pooling over tokens -> classes."""

    model_type = "hf_adaopt_bilstm_attention"

    def __init__(
        self,
        vocab_size=30000,
        embed_dim=128,
        hidden_size=128,
        num_layers=1,
        num_labels=2,
        dropout=0.2,
        pad_token_id=0,
        **kwargs,
    ):
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        super().__init__(num_labels=num_labels, pad_token_id=pad_token_id, **kwargs)


class BiLSTMAttentionForSequenceClassification(_SmallPreTrainedModel):
    config_class = BiLSTMAttentionConfig
    main_input_name = "input_ids"

    def __init__(self, config: BiLSTMAttentionConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=config.pad_token_id)
        self.lstm = nn.LSTM(
            config.embed_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        width = 2 * config.hidden_size
        # additive (Bahdanau-style) attention: score_t = v . tanh(W h_t)
        self.attention = nn.Linear(width, width)
        self.attention_vector = nn.Linear(width, 1, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ):
        if attention_mask is None:
            attention_mask = (
                input_ids.ne(self.config.pad_token_id)
                if self.config.pad_token_id is not None
                else torch.ones_like(input_ids)
            )
        mask = attention_mask.bool()
        hidden, _ = self.lstm(self.dropout(self.embeddings(input_ids)))
        scores = self.attention_vector(torch.tanh(self.attention(hidden))).squeeze(-1).float()
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1).to(hidden.dtype)
        pooled = torch.bmm(weights.unsqueeze(1), hidden).squeeze(1)
        logits = self.classifier(self.dropout(pooled))
        # the attention weights only on request: the Trainer would otherwise gather them at every evaluation
        attentions = (weights,) if kwargs.get("output_attentions") else None
        return SequenceClassifierOutput(loss=_classification_loss(logits, labels), logits=logits, attentions=attentions)


# ----------------------------------------------------------------------------------------------- loading

MODEL_CLASSES = {
    cls.config_class.model_type: cls
    for cls in (
        MLPForImageClassification,
        SimpleCNNForImageClassification,
        VGGForImageClassification,
        BiLSTMAttentionForSequenceClassification,
    )
}


def _register_auto_classes() -> None:
    """Make `AutoConfig`, `AutoModel` and the task's `AutoModelFor...` load these models once hf_adaopt.lab.models is
    imported (a saved config.json names its `model_type`, which transformers alone does not know)."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
    )

    for model_type, cls in MODEL_CLASSES.items():
        AutoConfig.register(model_type, cls.config_class, exist_ok=True)
        AutoModel.register(cls.config_class, cls, exist_ok=True)
        task_auto = (
            AutoModelForSequenceClassification if cls.main_input_name == "input_ids" else AutoModelForImageClassification
        )
        task_auto.register(cls.config_class, cls, exist_ok=True)


_register_auto_classes()


def load_model(path: str, **kwargs) -> PreTrainedModel:
    """A model saved by `save_pretrained` (weights), or a directory holding only its config.json (fresh init)."""
    import os

    config_dict, _ = PretrainedConfig.get_config_dict(path)
    model_type = config_dict.get("model_type")
    if model_type not in MODEL_CLASSES:
        raise ValueError(
            f"{path!r} holds a {model_type!r} model; hf_adaopt.lab.models loads {sorted(MODEL_CLASSES)}. "
            "For transformers models use their Auto classes."
        )
    cls = MODEL_CLASSES[model_type]
    has_weights = os.path.isdir(path) and any(
        name.endswith((".safetensors", ".bin")) for name in os.listdir(path)
    )
    if has_weights or not os.path.isdir(path):
        return cls.from_pretrained(path, **kwargs)
    return cls(cls.config_class.from_pretrained(path))
