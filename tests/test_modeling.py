import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining, Wav2Vec2Model

from hf_music_w2v import MusicClassifierOutput, Wav2Vec2ForMusicClassification

from .conftest import TINY, tiny_music_config

HEAD_KEYS = {"pitch_head.weight", "pitch_head.bias", "instrument_head.weight", "instrument_head.bias"}


def test_output_shapes(tiny_model, waveforms):
    output = tiny_model(waveforms)
    assert isinstance(output, MusicClassifierOutput)
    assert output.loss is None and output.hidden_states is None and output.attentions is None
    assert output.pitch_logits.shape == (3, 128)
    assert output.instrument_logits.shape == (3, 11)
    assert output.pooled_output.shape == (3, TINY["hidden_size"])
    assert torch.equal(output.logits, output.instrument_logits)


def test_hidden_states_and_attentions_on_request(waveforms):
    model = Wav2Vec2ForMusicClassification(tiny_music_config(attn_implementation="eager")).eval()
    output = model(waveforms, output_hidden_states=True, output_attentions=True)
    frames = output.hidden_states[-1].shape[1]
    assert len(output.hidden_states) == TINY["num_hidden_layers"] + 1
    assert all(h.shape == (3, frames, TINY["hidden_size"]) for h in output.hidden_states)
    assert len(output.attentions) == TINY["num_hidden_layers"]
    assert output.attentions[0].shape == (3, TINY["num_attention_heads"], frames, frames)


def test_pooled_output_is_mean_of_last_layer(tiny_model, waveforms):
    output = tiny_model(waveforms)
    last = tiny_model.wav2vec2(waveforms).last_hidden_state
    torch.testing.assert_close(output.pooled_output, last.mean(dim=1))


def test_precomputed_pooled_output_gives_the_same_logits_and_loss(tiny_model, waveforms):
    labels = dict(pitch_labels=torch.tensor([60, 61, 62]), instrument_labels=torch.tensor([0, 1, 2]))
    full = tiny_model(waveforms, **labels)
    heads_only = tiny_model(pooled_output=full.pooled_output, **labels)
    torch.testing.assert_close(heads_only.pitch_logits, full.pitch_logits)
    torch.testing.assert_close(heads_only.instrument_logits, full.instrument_logits)
    torch.testing.assert_close(heads_only.loss, full.loss)


def test_exactly_one_of_audio_and_pooled_output(tiny_model, waveforms):
    with pytest.raises(ValueError, match="exactly one of input_values and pooled_output"):
        tiny_model(waveforms, pooled_output=torch.zeros(3, 16))
    with pytest.raises(ValueError, match=r"pooled_output must be \[batch, 16\]"):
        tiny_model(pooled_output=torch.zeros(3, 7))


def test_loss_is_weighted_sum_of_both_heads(waveforms):
    model = Wav2Vec2ForMusicClassification(tiny_music_config(pitch_loss_weight=0.3, instrument_loss_weight=2.0))
    model.eval()
    pitch, family = torch.tensor([60, 61, 62]), torch.tensor([0, 4, 10])
    output = model(waveforms, pitch_labels=pitch, instrument_labels=family)
    ce = torch.nn.functional.cross_entropy
    expected = 0.3 * ce(output.pitch_logits, pitch) + 2.0 * ce(output.instrument_logits, family)
    torch.testing.assert_close(output.loss, expected)


def test_loss_with_one_label_kind_missing(tiny_model, waveforms):
    family = torch.tensor([0, 4, 10])
    only_family = tiny_model(waveforms, instrument_labels=family)
    expected = torch.nn.functional.cross_entropy(only_family.instrument_logits, family)
    torch.testing.assert_close(only_family.loss, expected)
    all_ignored = tiny_model(waveforms, pitch_labels=torch.full((3,), -100), instrument_labels=family)
    torch.testing.assert_close(all_ignored.loss, expected)
    assert torch.isfinite(all_ignored.loss)


def test_ignored_labels_are_left_out_of_the_mean(tiny_model, waveforms):
    output = tiny_model(waveforms, pitch_labels=torch.tensor([60, -100, 62]))
    expected = torch.nn.functional.cross_entropy(output.pitch_logits[[0, 2]], torch.tensor([60, 62]))
    torch.testing.assert_close(output.loss, expected)


def test_return_dict_false_gives_tuple(tiny_model, waveforms):
    output = tiny_model(waveforms, instrument_labels=torch.tensor([1, 2, 3]), return_dict=False)
    assert isinstance(output, tuple)
    assert output[0].dim() == 0 and output[1].shape == (3, 11)


def test_gradients_reach_both_heads_and_backbone(tiny_model, waveforms):
    tiny_model.train()
    tiny_model(waveforms, pitch_labels=torch.tensor([60, 61, 62]), instrument_labels=torch.tensor([0, 1, 2])).loss.backward()
    for name in ("pitch_head.weight", "instrument_head.weight", "wav2vec2.encoder.layers.0.attention.q_proj.weight"):
        grad = tiny_model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_frozen_feature_encoder_gets_no_gradient(tiny_model, waveforms):
    tiny_model.train()
    tiny_model.freeze_feature_encoder()
    tiny_model(waveforms, instrument_labels=torch.tensor([0, 1, 2])).loss.backward()
    assert all(p.grad is None for p in tiny_model.wav2vec2.feature_extractor.parameters())
    assert tiny_model.wav2vec2.feature_projection.projection.weight.grad is not None


def test_frozen_base_model_trains_only_heads(tiny_model, waveforms):
    tiny_model.freeze_base_model()
    trainable = {name for name, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable == HEAD_KEYS


def test_batched_matches_single_with_padding_and_mask():
    torch.manual_seed(0)
    model = Wav2Vec2ForMusicClassification(
        tiny_music_config(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    ).eval()
    lengths = [4000, 2500, 1700]
    clips = [torch.randn(n, generator=torch.Generator().manual_seed(n)) for n in lengths]
    batch = torch.zeros(3, max(lengths))
    mask = torch.zeros(3, max(lengths), dtype=torch.long)
    for row, clip in enumerate(clips):
        batch[row, : len(clip)] = clip
        mask[row, : len(clip)] = 1
    batched = model(batch, attention_mask=mask)
    for row, clip in enumerate(clips):
        single = model(clip[None])
        torch.testing.assert_close(batched.pitch_logits[row], single.pitch_logits[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched.pooled_output[row], single.pooled_output[0], atol=1e-5, rtol=1e-4)


def test_rejects_wrong_input_rank(tiny_model):
    with pytest.raises(ValueError, match=r"\[batch, sample\]"):
        tiny_model(torch.randn(2, 1, 4000))


@pytest.mark.parametrize("source_class", [Wav2Vec2ForPreTraining, Wav2Vec2Model])
def test_backbone_checkpoint_loads_with_only_heads_new(tmp_path, source_class):
    torch.manual_seed(0)
    source = source_class(Wav2Vec2Config(**TINY, mask_time_prob=0.65))
    source.save_pretrained(tmp_path)
    model, info = Wav2Vec2ForMusicClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert set(info["missing_keys"]) == HEAD_KEYS
    assert not info["mismatched_keys"]
    backbone = source.wav2vec2 if source_class is Wav2Vec2ForPreTraining else source
    for name, tensor in backbone.state_dict().items():
        torch.testing.assert_close(model.wav2vec2.state_dict()[name], tensor, msg=name)
    assert model.config.mask_time_prob == 0.05


def test_frame_mask_matches_the_feature_encoders_output_lengths():
    model = Wav2Vec2ForMusicClassification(tiny_music_config(feat_extract_norm="layer"))
    attention_mask = torch.zeros(3, 4000, dtype=torch.long)
    for row, length in enumerate((4000, 2500, 401)):
        attention_mask[row, :length] = 1
    frames = model.wav2vec2.feature_extractor(torch.randn(1, 4000)).shape[-1]
    mask = model.frame_mask(frames, attention_mask)
    for row, length in enumerate((4000, 2500, 401)):
        alone = model.wav2vec2.feature_extractor(torch.randn(1, length)).shape[-1]  # what the encoder makes of it
        assert mask[row].tolist() == [True] * alone + [False] * (frames - alone)


def test_an_unsupported_transformers_release_is_refused_with_the_version_needed():
    from hf_music_w2v.configuration_music_wav2vec2 import check_transformers_version

    check_transformers_version("5.23.0")
    with pytest.raises(ImportError, match=r"needs transformers>=5,<6; this environment has transformers 4\.57\.1"):
        check_transformers_version("4.57.1")
    with pytest.raises(ImportError, match="pip install 'transformers>=5,<6'"):
        check_transformers_version("6.0.0.dev0")


def eager_model(**overrides):
    config = tiny_music_config(**overrides)
    config._attn_implementation = "eager"  # SDPA computes no attention maps (transformers warns and returns none)
    torch.manual_seed(0)
    return Wav2Vec2ForMusicClassification(config).eval()


@pytest.mark.parametrize("source", ["call", "config"])
def test_hidden_states_and_attentions_follow_the_call_or_the_config(waveforms, source):
    flags = dict(output_hidden_states=True, output_attentions=True)
    model = eager_model(**(flags if source == "config" else {}))
    output = model(waveforms, **(flags if source == "call" else {}))
    layers, frames = model.config.num_hidden_layers, output.hidden_states[-1].shape[1]
    assert len(output.hidden_states) == layers + 1  # the Transformer's input, then each layer's output
    assert all(h.shape == (3, frames, model.config.hidden_size) for h in output.hidden_states)
    assert len(output.attentions) == layers
    assert all(a.shape == (3, model.config.num_attention_heads, frames, frames) for a in output.attentions)
    torch.testing.assert_close(output.hidden_states[-1].mean(dim=1), output.pooled_output)
    plain = model(waveforms, output_hidden_states=False, output_attentions=False)  # the call overrides the config
    assert plain.hidden_states is None and plain.attentions is None


def test_return_dict_follows_the_config(waveforms):
    model = eager_model(return_dict=False)
    assert isinstance(model(waveforms), tuple)
    assert isinstance(model(waveforms, return_dict=True), MusicClassifierOutput)


def test_gradients_are_retained_on_hidden_states_and_attentions(waveforms):
    model = eager_model(output_hidden_states=True, output_attentions=True)
    output = model(waveforms, pitch_labels=torch.tensor([60, 61, 62]))
    hidden, attention = output.hidden_states[0], output.attentions[0]
    hidden.retain_grad()
    attention.retain_grad()
    output.loss.backward()
    assert hidden.grad is not None and attention.grad is not None


def test_gradient_checkpointing_gives_the_same_gradients(waveforms):
    labels = dict(pitch_labels=torch.tensor([60, 61, 62]), instrument_labels=torch.tensor([0, 3, 10]))
    grads = []
    for checkpointing in (False, True):
        model = eager_model(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                            feat_proj_dropout=0.0, mask_time_prob=0.0).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(waveforms, **labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_save_and_load_round_trip_gives_the_same_logits(tmp_path, tiny_model, waveforms):
    tiny_model.save_pretrained(tmp_path / "model")
    loaded = Wav2Vec2ForMusicClassification.from_pretrained(tmp_path / "model").eval()
    torch.testing.assert_close(loaded(waveforms).pitch_logits, tiny_model(waveforms).pitch_logits)


def test_torch_export_forward_equals_eager(tiny_model, waveforms):
    exported = torch.export.export(tiny_model, (waveforms,))
    expected = tiny_model(waveforms)
    got = exported.module()(waveforms)
    torch.testing.assert_close(got.pitch_logits if hasattr(got, "pitch_logits") else got["pitch_logits"],
                               expected.pitch_logits)


@pytest.mark.slow
def test_torch_compile_forward_equals_eager(tiny_model, waveforms):
    compiled = torch.compile(tiny_model)
    expected = tiny_model(waveforms)
    got = compiled(waveforms)
    torch.testing.assert_close(got.pitch_logits, expected.pitch_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.instrument_logits, expected.instrument_logits, rtol=1e-4, atol=1e-5)
