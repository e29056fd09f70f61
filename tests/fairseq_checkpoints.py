"""fairseq wav2vec 2.0 checkpoint files made without fairseq, in the three forms fairseq saved its settings.

The weights carry fairseq's own parameter names and shapes, written out here from fairseq's module layout (not from
the converter's table). The omegaconf form is pickled from classes with omegaconf's module and class names, put in
`sys.modules` only while the file is written, so the file holds the same globals a real one does.
"""

import argparse
import sys
import types
import typing
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

# A wav2vec2 of a few thousand parameters: 2 convolutions (stride 40), 2 Transformer layers of width 16.
TINY_FAIRSEQ_MODEL = {
    "_name": "wav2vec2",
    "extractor_mode": "default",
    "conv_feature_layers": "[(8, 10, 5)] + [(8, 8, 8)] * 1",
    "conv_bias": False,
    "encoder_layers": 2,
    "encoder_embed_dim": 16,
    "encoder_ffn_embed_dim": 24,
    "encoder_attention_heads": 2,
    "activation_fn": "gelu",
    "layer_type": "transformer",
    "layer_norm_first": False,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.05,
    "dropout_input": 0.1,
    "dropout_features": 0.1,
    "final_dim": 12,
    "latent_vars": 4,
    "latent_groups": 2,
    "latent_dim": 0,
    "latent_temp": [2.0, 0.5, 0.999995],
    "quantize_targets": True,
    "quantize_input": False,
    "logit_temp": 0.1,
    "num_negatives": 7,
    "mask_prob": 0.65,
    "mask_length": 10,
    "mask_channel_prob": 0.0,
    "mask_channel_length": 10,
    "conv_pos": 8,
    "conv_pos_groups": 2,
    "feature_grad_mult": 0.1,
}

LARGE_STYLE = {"extractor_mode": "layer_norm", "conv_bias": True, "layer_norm_first": True}


def tiny_settings(**overrides) -> dict:
    return {**TINY_FAIRSEQ_MODEL, **overrides}


def fairseq_state_dict(model: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the names and shapes fairseq's `Wav2Vec2Model` gives them for `model`'s settings."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, centre=0.0):
        return centre + 0.2 * torch.randn(*shape, generator=generator)

    layers = eval(model["conv_feature_layers"])  # the test's own literal
    embed, hidden, ffn = layers[-1][0], model["encoder_embed_dim"], model["encoder_ffn_embed_dim"]
    final_dim = model["final_dim"] or hidden
    groups, per_group = model["latent_groups"], model["latent_vars"]
    state = {"mask_emb": rand(hidden)}
    in_dim = 1
    for index, (dim, kernel, _) in enumerate(layers):
        prefix = f"feature_extractor.conv_layers.{index}"
        state[f"{prefix}.0.weight"] = rand(dim, in_dim, kernel)
        if model["conv_bias"]:
            state[f"{prefix}.0.bias"] = rand(dim)
        if model["extractor_mode"] == "layer_norm":  # Sequential(TransposeLast, LayerNorm, TransposeLast) at 2
            state[f"{prefix}.2.1.weight"], state[f"{prefix}.2.1.bias"] = rand(dim, centre=1.0), rand(dim)
        elif index == 0:  # GroupNorm at 2 in the first block only
            state[f"{prefix}.2.weight"], state[f"{prefix}.2.bias"] = rand(dim, centre=1.0), rand(dim)
        in_dim = dim
    state["layer_norm.weight"], state["layer_norm.bias"] = rand(embed, centre=1.0), rand(embed)
    if embed != hidden:
        state["post_extract_proj.weight"], state["post_extract_proj.bias"] = rand(hidden, embed), rand(hidden)
    kernel, conv_groups = model["conv_pos"], model["conv_pos_groups"]
    state["encoder.pos_conv.0.bias"] = rand(hidden)
    state["encoder.pos_conv.0.weight_g"] = rand(1, 1, kernel, centre=1.0)
    state["encoder.pos_conv.0.weight_v"] = rand(hidden, hidden // conv_groups, kernel)
    for index in range(model["encoder_layers"]):
        prefix = f"encoder.layers.{index}"
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state[f"{prefix}.self_attn.{name}.weight"] = rand(hidden, hidden)
            state[f"{prefix}.self_attn.{name}.bias"] = rand(hidden)
        for name in ("self_attn_layer_norm", "final_layer_norm"):
            state[f"{prefix}.{name}.weight"], state[f"{prefix}.{name}.bias"] = rand(hidden, centre=1.0), rand(hidden)
        state[f"{prefix}.fc1.weight"], state[f"{prefix}.fc1.bias"] = rand(ffn, hidden), rand(ffn)
        state[f"{prefix}.fc2.weight"], state[f"{prefix}.fc2.bias"] = rand(hidden, ffn), rand(hidden)
    state["encoder.layer_norm.weight"], state["encoder.layer_norm.bias"] = rand(hidden, centre=1.0), rand(hidden)
    state["quantizer.vars"] = rand(1, groups * per_group, final_dim // groups)
    state["quantizer.weight_proj.weight"] = rand(groups * per_group, embed)
    state["quantizer.weight_proj.bias"] = rand(groups * per_group)
    state["project_q.weight"], state["project_q.bias"] = rand(final_dim, final_dim), rand(final_dim)
    state["final_proj.weight"], state["final_proj.bias"] = rand(final_dim, hidden), rand(final_dim)
    return state


def fairseq_settings(model: dict, normalize: bool = False) -> dict:
    """The settings of a fairseq 0.12 trainer checkpoint (`cfg`), as a plain dict."""
    return {
        "_name": None,
        "common": {"_name": None, "seed": 1, "cpu": True, "fp16": False},
        "model": dict(model),
        "task": {"_name": "audio_pretraining", "data": "/data/manifests", "normalize": normalize,
                 "sample_rate": 16000, "max_sample_size": 250000},
        "criterion": {"_name": "wav2vec", "infonce": True, "loss_weights": [0.1, 10.0],
                      "log_keys": ["prob_perplexity", "code_perplexity", "temp"]},
    }


def trainer_state(weights: dict) -> dict:
    """What fairseq's trainer saves beside the settings: weights, optimizer history and state, extra state."""
    return {
        "model": weights,
        "optimizer_history": [{"criterion_name": "Wav2vecCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 3}],
        "extra_state": {"epoch": 1, "train_iterator": {"epoch": 1, "iterations_in_epoch": 3, "shuffle": True},
                        "previous_best": None, "metrics": {}},
        "last_optimizer_state": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 5e-4}]},
    }


def dict_checkpoint(model: dict, weights: dict, normalize: bool = False) -> dict:
    """fairseq 0.12: settings as a plain dict under `cfg`."""
    return {"args": None, "cfg": fairseq_settings(model, normalize), **trainer_state(weights)}


def namespace_checkpoint(model: dict, weights: dict, normalize: bool = False) -> dict:
    """fairseq before 0.10: one flat `argparse.Namespace` under `args` (model, task and criterion options)."""
    flat = {key: value for key, value in model.items() if key != "_name"}
    flat.update(arch="wav2vec2", task="audio_pretraining", criterion="wav2vec", normalize=normalize,
                sample_rate=16000, loss_weights=[0.1, 10.0], infonce=True)
    return {"args": argparse.Namespace(**flat), **trainer_state(weights)}


# --- omegaconf's classes, by name only -----------------------------------------------------------------------------

class _Box:
    def __reduce_ex__(self, protocol):
        import copyreg

        return copyreg.__newobj__, (type(self),), dict(self.__dict__)


def _named(module: str, name: str) -> type:
    return type(name, (_Box,), {"__module__": module, "__qualname__": name})


Metadata = _named("omegaconf.base", "Metadata")
ContainerMetadata = _named("omegaconf.base", "ContainerMetadata")
DictConfig = _named("omegaconf.dictconfig", "DictConfig")
ListConfig = _named("omegaconf.listconfig", "ListConfig")
AnyNode = _named("omegaconf.nodes", "AnyNode")


def _container(cls, content, key, parent):
    node = cls()
    node.__dict__.update(
        _metadata=ContainerMetadata(), _parent=parent, _content=None)
    node._metadata.__dict__.update(ref_type=typing.Any, object_type=dict if cls is DictConfig else list,
                                   optional=True, key=key, flags={}, flags_root=False,
                                   resolver_cache=defaultdict(dict), element_type=typing.Any,
                                   key_type=typing.Any if cls is DictConfig else int)
    if cls is DictConfig:
        node._content = {k: _node(v, k, node) for k, v in content.items()}
    else:
        node._content = [_node(v, i, node) for i, v in enumerate(content)]
    return node


def _node(value, key, parent):
    if isinstance(value, dict):
        return _container(DictConfig, value, key, parent)
    if isinstance(value, (list, tuple)):
        return _container(ListConfig, value, key, parent)
    node = AnyNode()
    node.__dict__.update(_metadata=Metadata(), _parent=parent, _val=value)
    node._metadata.__dict__.update(ref_type=typing.Any, object_type=None, optional=True, key=key, flags={},
                                   flags_root=False)
    return node


@contextmanager
def omegaconf_names():
    """omegaconf's module names point at this file's look-alike classes while inside (pickling checks them)."""
    saved = {name: sys.modules.get(name) for name in
             ("omegaconf", "omegaconf.base", "omegaconf.dictconfig", "omegaconf.listconfig", "omegaconf.nodes")}
    modules = {name: types.ModuleType(name) for name in saved}
    for cls in (Metadata, ContainerMetadata, DictConfig, ListConfig, AnyNode):
        setattr(modules[cls.__module__], cls.__qualname__, cls)
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module


def dictconfig_checkpoint(model: dict, weights: dict, normalize: bool = False) -> dict:
    """fairseq 0.10-0.11: settings as an omegaconf `DictConfig` (made from a plain dict) under `cfg`."""
    return {"args": None, "cfg": _node(fairseq_settings(model, normalize), None, None), **trainer_state(weights)}


FORMS = {"dict": dict_checkpoint, "DictConfig": dictconfig_checkpoint, "Namespace": namespace_checkpoint}


def write_checkpoint(path: Path, form: str = "dict", model: dict | None = None, seed: int = 0,
                     normalize: bool = False, extra: dict | None = None) -> Path:
    """A fairseq-style checkpoint file at `path`, with settings saved in `form` ("dict", "DictConfig", "Namespace")."""
    model = model or tiny_settings()
    checkpoint = FORMS[form](model, fairseq_state_dict(model, seed), normalize)
    checkpoint.update(extra or {})
    with omegaconf_names():
        torch.save(checkpoint, path)
    return path


# --- A payload that would run if the file were unpickled normally ---------------------------------------------------

def plant_marker(path):
    Path(path).write_text("the pickled code ran")


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return plant_marker, (self.marker,)
