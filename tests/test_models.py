"""The experiment's models: outputs, save/load round trip, config validation, attention masking."""

from __future__ import annotations

import pytest
import torch
from fixtures.torch_threads import one_thread  # noqa: F401 (autouse)

from hf_adaopt.lab.models import (
    MODEL_CLASSES,
    BiLSTMAttentionConfig,
    BiLSTMAttentionForSequenceClassification,
    MLPConfig,
    MLPForImageClassification,
    SimpleCNNConfig,
    SimpleCNNForImageClassification,
    VGGConfig,
    VGGForImageClassification,
    load_model,
)


def _image(shape):
    return lambda: torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))


CASES = {
    "mlp": (MLPForImageClassification, lambda: MLPConfig(input_dim=64), _image((1, 8, 8))),
    "simple_cnn": (
        SimpleCNNForImageClassification,
        lambda: SimpleCNNConfig(num_channels=1, image_size=28, channels=(4, 8), hidden_size=16),
        _image((1, 28, 28)),
    ),
    "vgg": (VGGForImageClassification, lambda: VGGConfig(base_width=2, classifier_hidden=16), _image((3, 32, 32))),
    "bilstm": (
        BiLSTMAttentionForSequenceClassification,
        lambda: BiLSTMAttentionConfig(vocab_size=50, embed_dim=8, hidden_size=8),
        lambda: torch.randint(1, 50, (4, 12), generator=torch.Generator().manual_seed(0)),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_forward_returns_logits_and_loss_with_labels(name):
    cls, make_config, make_input = CASES[name]
    config = make_config()
    model = cls(config)
    labels = torch.arange(4) % config.num_labels
    out = model(make_input(), labels=labels)
    assert out.logits.shape == (4, config.num_labels)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert model(make_input()).loss is None


@pytest.mark.parametrize("name", CASES)
def test_save_pretrained_from_pretrained_round_trip(name, tmp_path):
    cls, make_config, make_input = CASES[name]
    model = cls(make_config()).eval()
    model.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path).eval()
    assert type(loaded.config) is type(model.config)
    differs = {k for k, v in loaded.config.to_dict().items() if model.config.to_dict().get(k) != v}
    assert differs <= {"_name_or_path"}
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1
    x = make_input()
    torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)
    # load_model picks the class from config.json's model_type
    again = load_model(str(tmp_path)).eval()
    assert type(again) is cls
    torch.testing.assert_close(again(x).logits, model(x).logits, rtol=0, atol=0)


def test_load_model_from_config_only_builds_a_fresh_model(tmp_path):
    VGGConfig(base_width=2, classifier_hidden=16).save_pretrained(tmp_path)
    model = load_model(str(tmp_path))
    assert isinstance(model, VGGForImageClassification) and model.config.base_width == 2


def test_load_model_rejects_other_model_types(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="bert"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("model_type", sorted(MODEL_CLASSES))
def test_every_model_type_is_registered_with_the_auto_classes(model_type):
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(model_type)
    assert config.model_type == model_type
    assert AutoModel._model_mapping[type(config)] is MODEL_CLASSES[model_type]


def test_vgg16_layout_has_13_convs_with_batchnorm():
    model = VGGForImageClassification(VGGConfig())
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == 13 and len(norms) == 13
    assert [c.out_channels for c in convs] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6


def test_mlp_is_128_128_64():
    model = MLPForImageClassification(MLPConfig(input_dim=784))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 128), (128, 128), (128, 64), (64, 10)]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VGGConfig(stage_depths=(2, 2), stage_multipliers=(1,)), "same length"),
        (lambda: VGGConfig(image_size=16), "too small"),
        (lambda: VGGConfig(base_width=0), "base_width"),
        (lambda: SimpleCNNConfig(image_size=2, channels=(4, 8)), "too small"),
        (lambda: MLPConfig(input_dim=0), "input_dim"),
        (lambda: BiLSTMAttentionConfig(vocab_size=0), "vocab_size"),
    ],
)
def test_config_validation_names_the_bad_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bilstm_attention_ignores_padding():
    model = BiLSTMAttentionForSequenceClassification(
        BiLSTMAttentionConfig(vocab_size=50, embed_dim=8, hidden_size=8, pad_token_id=0)
    ).eval()
    ids = torch.randint(1, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    padded = torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(2, 7), torch.zeros(2, 5)], dim=1).long()
    out = model(padded, attention_mask=mask, output_attentions=True)
    # a backward LSTM does read the trailing pads, so compare pooled attention weights, not logits
    assert torch.all(out.attentions[0][:, 7:] == 0)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2))
    # the mask defaults to "not the pad token"
    torch.testing.assert_close(model(padded).logits, out.logits)


def test_charlm_model_variants_have_the_documented_sizes_and_an_unknown_one_is_named():
    from hf_adaopt.lab.tasks import charlm

    sizes = {v: sum(p.numel() for p in charlm.build_model(64, v).parameters()) for v in charlm.MODELS}
    assert sizes == {"d128": 834_304, "d64": 220_544}  # the docstring's 0.8M and 0.22M (tied embeddings)
    assert sum(p.numel() for p in charlm.build_model(64).parameters()) == sizes[charlm.DEFAULT_MODEL]
    with pytest.raises(ValueError, match=r"Unknown --model 'd32' for task charlm; choose one of \('d128', 'd64'\)"):
        charlm.build_model(64, "d32")
