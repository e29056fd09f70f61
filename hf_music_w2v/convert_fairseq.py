"""fairseq wav2vec 2.0 pretraining checkpoints (the paper's own among them) as `Wav2Vec2ForPreTraining` folders, and
the encoder of fine-tuned ones (CTC, classification: `w2v_args` / `w2v_path`) as `Wav2Vec2Model` folders.

    hf-music-w2v convert-fairseq w2v_music_checkpoint.pt runs/w2v-music-paper

Safe by construction: fairseq, omegaconf and hydra are never imported and no pickled code runs. The file is read
with `torch.load(weights_only=True)`, which builds tensors and plain containers only; the three ways fairseq saved
its settings (a plain dict, omegaconf `DictConfig` objects, an `argparse.Namespace` under `args`) are read through
inert stand-in classes registered under those names, which only keep the state they are given. Any other Python
global in the file is refused, naming it, before anything is built from it. The convolution list fairseq keeps as
Python source (`conv_feature_layers`) is parsed as a literal, never evaluated.
"""

import ast
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining, Wav2Vec2Model

from .atomic import staged_directory
from .fingerprints import file_digest
from .hub import quiet_loading, write_model_card, write_model_files


class FairseqCheckpointError(ValueError):
    """A file that is not a wav2vec 2.0 checkpoint this converter can read (the message says why)."""


# --- Reading the file: weights only, settings through stand-ins -------------------------------------------------

class _StandIn:
    """Keeps whatever state the pickle gives it; has no behaviour, so building one runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Container(_StandIn):
    """omegaconf's `DictConfig` / `ListConfig`: the settings are in the state's `_content`."""


class _ValueNode(_StandIn):
    """omegaconf's `AnyNode` and typed value nodes: the value is in the state's `_val`."""


class _Metadata(_StandIn):
    """omegaconf's `Metadata` / `ContainerMetadata` (key, flags, types): not settings, dropped."""


class _Namespace(_StandIn):
    """`argparse.Namespace` of fairseq before 0.10: the settings are its attributes, the state."""


class _TypeName(_StandIn):
    """A type omegaconf's metadata names (`typing.Any`, `dict`, `list`, `int`, ...): only a name here, never called
    with what the file gives."""


def _plain_defaultdict(*args: Any) -> dict:
    """`collections.defaultdict(dict)` (omegaconf's resolver cache) read as an empty dict; its factory is ignored."""
    return {}


#: Names fairseq's settings are pickled under -> the inert stand-in read in their place.
STAND_INS: dict[str, Any] = {
    "omegaconf.dictconfig.DictConfig": _Container,
    "omegaconf.listconfig.ListConfig": _Container,
    "omegaconf.nodes.AnyNode": _ValueNode,
    "omegaconf.nodes.StringNode": _ValueNode,
    "omegaconf.nodes.IntegerNode": _ValueNode,
    "omegaconf.nodes.FloatNode": _ValueNode,
    "omegaconf.nodes.BooleanNode": _ValueNode,
    "omegaconf.base.Metadata": _Metadata,
    "omegaconf.base.ContainerMetadata": _Metadata,
    "argparse.Namespace": _Namespace,
    "collections.defaultdict": _plain_defaultdict,
    **{f"{module}.{name}": _TypeName for module, name in (("typing", "Any"), ("builtins", "dict"), ("builtins", "list"),
                                                        ("builtins", "int"), ("builtins", "str"),
                                                        ("builtins", "float"), ("builtins", "bool"))},
}

_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


def read_checkpoint_file(path: str | os.PathLike) -> dict:
    """The unpickled checkpoint, read weights-only with the stand-ins; settings still as stand-in objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file {path}" if not path.exists() else f"{path} is not a file")
    with open(path, "rb") as file:
        start = file.read(4)
    # torch.save writes a zip archive, or (before torch 1.6) a pickle of protocol 2 or later
    if not (start.startswith(b"PK\x03\x04") or start[:1] == b"\x80"):
        raise FairseqCheckpointError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        with torch.serialization.safe_globals([(stand_in, name) for name, stand_in in STAND_INS.items()]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _REFUSED_GLOBAL.search(str(error))
        if refused:
            raise FairseqCheckpointError(
                f"{path}: refused: the checkpoint holds the Python global {refused.group(1)}, which is neither a "
                "tensor nor one of fairseq's config classes; nothing from the file was run") from None
        # torch's message is a paragraph about weights_only; the unpickler's own complaint follows this marker
        reason = str(error).partition("WeightsUnpickler error:")[2].strip().split("\n\n")[0] or type(error).__name__
        raise FairseqCheckpointError(f"{path}: refused, cannot be read weights-only: {reason}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        raise FairseqCheckpointError(f"{path} is not a PyTorch checkpoint ({str(error).splitlines()[0]})") from None
    if not isinstance(checkpoint, dict):
        raise FairseqCheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a fairseq checkpoint "
                                     "(a dict with 'model' and 'cfg' or 'args')")
    return checkpoint


def plain(value: Any) -> Any:
    """Stand-ins and containers as plain dicts, lists and values."""
    if isinstance(value, _Container):
        content = (value.state or {}).get("_content") if isinstance(value.state, dict) else None
        return plain(content)
    if isinstance(value, _ValueNode):
        return plain(value.state.get("_val")) if isinstance(value.state, dict) else None
    if isinstance(value, _Namespace):
        return plain(value.state if isinstance(value.state, dict) else {})
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items() if not isinstance(item, _Metadata)}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    return value


_INTERPOLATION = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")


def resolve_interpolations(config: dict, root: dict | None = None) -> dict:
    """omegaconf's `${section.field}` references (a whole value naming another field) replaced by that value."""
    root = config if root is None else root

    def lookup(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: lookup(item) for key, item in value.items()}
        if isinstance(value, list):
            return [lookup(item) for item in value]
        reference = _INTERPOLATION.match(value) if isinstance(value, str) else None
        if not reference:
            return value
        target: Any = root
        for part in reference.group(1).split("."):
            if not isinstance(target, dict) or part not in target:
                return value
            target = target[part]
        return lookup(target)

    return lookup(config)


# --- What the checkpoint says -----------------------------------------------------------------------------------

#: fairseq's `Wav2Vec2Config` defaults (fairseq 0.12) for the fields the conversion reads, used where an older
#: checkpoint's settings lack one.
FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default", "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_type": "transformer", "dropout": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "dropout_input": 0.0,
    "dropout_features": 0.0, "final_dim": 0, "layer_norm_first": False,
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
    "conv_bias": False, "logit_temp": 0.1, "quantize_targets": False, "quantize_input": False,
    "same_quantizer": False, "target_glu": False, "feature_grad_mult": 1.0, "quantizer_depth": 1,
    "latent_vars": 320, "latent_groups": 2, "latent_dim": 0, "mask_length": 10, "mask_prob": 0.65,
    "mask_selection": "static", "mask_channel_length": 10, "mask_channel_prob": 0.0, "num_negatives": 100,
    "negatives_from_everywhere": False, "cross_sample_negatives": 0, "codebook_negatives": 0, "conv_pos": 128,
    "conv_pos_groups": 16, "pos_conv_depth": 1, "conv_pos_batch_norm": False, "latent_temp": (2.0, 0.5, 0.999995),
    "crop_seq_to_multiple": 1,
}

#: fairseq activation names -> transformers' names of the same function.
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "tanh": "tanh", "linear": "linear", "gelu_accurate": "gelu_new"}

#: fairseq settings the transformers model cannot reproduce -> the value it needs (a checkpoint with another
#: value is refused, naming the field).
UNSUPPORTED = {"layer_type": "transformer", "quantize_targets": True, "quantize_input": False, "target_glu": False,
               "quantizer_depth": 1, "pos_conv_depth": 1, "conv_pos_batch_norm": False, "crop_seq_to_multiple": 1,
               "negatives_from_everywhere": False, "cross_sample_negatives": 0, "codebook_negatives": 0}


@dataclass
class FairseqCheckpoint:
    """The parts of a fairseq checkpoint the conversion uses, as plain Python."""

    path: Path
    form: str  # "dict", "DictConfig" or "Namespace": how the settings were saved
    model: dict  # the model's settings, fairseq defaults filled in
    task: dict
    criterion: dict
    state_dict: dict[str, torch.Tensor]
    fairseq_version: str | None = None
    sha256: str = field(default="", repr=False)
    #: a fine-tune's model name ("wav2vec_ctc", ...); "" for a pretraining checkpoint
    fine_tuned: str = ""
    #: the fine-tune's tensors outside its wav2vec 2.0 encoder (the head), left out of the conversion
    head: list[str] = field(default_factory=list)


def settings_form(checkpoint: dict) -> str:
    config = checkpoint.get("cfg")
    if isinstance(config, _Container):
        return "DictConfig"
    if isinstance(config, dict):
        return "dict"
    if isinstance(checkpoint.get("args"), _Namespace):
        return "Namespace"
    return "none"


def split_settings(settings: dict, form: str) -> tuple[dict, dict, dict, str]:
    """(model, task, criterion, model name) of a checkpoint's settings, in either layout."""
    if form == "Namespace" or "model" not in settings:  # one flat namespace holds the model's, task's and criterion's
        return settings, settings, settings, str(settings.get("arch", settings.get("_name", "")) or "")
    model, task, criterion = (settings.get(part) or {} for part in ("model", "task", "criterion"))
    name = str(model.get("_name", "") or "") if isinstance(model, dict) else ""
    return model, task, criterion, name


#: Where a fine-tune keeps its wav2vec 2.0 encoder: `w2v_encoder.w2v_model.` (CTC, classification) or
#: `encoder.w2v_model.` (seq2seq); every other tensor belongs to its head.
_ENCODER_PREFIX = re.compile(r"^(.*?\bw2v_model\.)")


def encoder_settings(path: Path, model: dict) -> tuple[dict, dict]:
    """A fine-tune's encoder settings (model, task): embedded under `w2v_args`, or those of the pretraining
    checkpoint named by `w2v_path` when that file is here."""
    embedded = model.get("w2v_args")
    if isinstance(embedded, dict) and embedded:
        encoder_model, encoder_task, _, _ = split_settings(embedded, "dict")
        return encoder_model, encoder_task
    pretraining = model.get("w2v_path")
    if not pretraining:
        raise FairseqCheckpointError(f"{path}: a fine-tuned model without its encoder's settings (neither "
                                     "w2v_args nor w2v_path)")
    source = Path(str(pretraining))
    candidates = [source] if source.is_absolute() else [path.parent / source, source]
    found = next((candidate for candidate in candidates if candidate.is_file()), None)
    if found is None:
        raise FairseqCheckpointError(f"{path}: a fine-tuned model whose encoder settings are only in its w2v_path "
                                     f"{pretraining}, which is not a file here; put that pretraining checkpoint "
                                     "there (its settings are read, not its weights)")
    encoder = load_fairseq_checkpoint(found, pretraining_only=True)
    return encoder.model, encoder.task


def load_fairseq_checkpoint(path: str | os.PathLike, pretraining_only: bool = False) -> FairseqCheckpoint:
    """Read a fairseq wav2vec 2.0 checkpoint without fairseq and without running pickled code: a pretraining
    checkpoint, or a fine-tune, of which only the wav2vec 2.0 encoder is kept (`head` names what is left out)."""
    path = Path(path)
    raw = read_checkpoint_file(path)
    form = settings_form(raw)
    state_dict = raw.get("model")
    if form == "none" or not isinstance(state_dict, dict):
        raise FairseqCheckpointError(f"{path} is not a fairseq checkpoint: it has no 'model' weights with 'cfg' or "
                                     f"'args' settings (keys: {', '.join(map(str, raw)) or 'none'})")
    try:
        settings = plain(raw["args"] if form == "Namespace" else raw["cfg"])
        if form != "Namespace" and isinstance(settings, dict):
            settings = resolve_interpolations(settings)
    except RecursionError:
        raise FairseqCheckpointError(f"{path}: its settings contain or refer to themselves without end") from None
    if not isinstance(settings, dict):
        raise FairseqCheckpointError(f"{path}: its settings are a {type(settings).__name__}, not a mapping")
    model, task, criterion, name = split_settings(settings, form)
    tensors = {key: value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}
    if len(tensors) != len(state_dict):
        others = sorted(str(key) for key, value in state_dict.items() if not isinstance(value, torch.Tensor))
        raise FairseqCheckpointError(f"{path}: the model's state holds entries that are not tensors: {others[:5]}")
    fine_tuned, head = "", []
    if name != "wav2vec2" and isinstance(model, dict) and (
            name.startswith("wav2vec_") or "w2v_args" in model or "w2v_path" in model):
        fine_tuned = name or "fine-tuned"
        if pretraining_only:  # a fine-tune's w2v_path names another fine-tune (or itself): not followed further
            raise FairseqCheckpointError(f"{path}, named by a fine-tune's w2v_path, is itself a fine-tuned "
                                         f"{fine_tuned} model, not the pretraining checkpoint")
        model, task = encoder_settings(path, model)
        prefixes = sorted({match.group(1) for key in tensors if (match := _ENCODER_PREFIX.match(key))})
        if len(prefixes) != 1:
            raise FairseqCheckpointError(f"{path}: a fine-tuned {fine_tuned} model whose weights hold "
                                         f"{'no' if not prefixes else 'more than one'} wav2vec 2.0 encoder "
                                         f"(w2v_model.*){': ' + ', '.join(prefixes) if prefixes else ''}")
        name = str(model.get("_name", model.get("arch", "wav2vec2")) or "wav2vec2")
        head = sorted(key for key in tensors if not key.startswith(prefixes[0]))
        tensors = {key[len(prefixes[0]):]: value for key, value in tensors.items() if key.startswith(prefixes[0])}
    if name != "wav2vec2":
        what = f"a {name} model" if name else "a model without a name"
        raise FairseqCheckpointError(f"{path} is not a wav2vec 2.0 checkpoint: its settings describe {what}"
                                     f"{' encoder' if fine_tuned else ''}")
    version = next((entry.get("fairseq_version") for entry in raw.get("optimizer_history") or []
                    if isinstance(entry, dict) and entry.get("fairseq_version")), None)
    return FairseqCheckpoint(path=path, form=form, model={**FAIRSEQ_DEFAULTS, **model}, task=task,
                             criterion=criterion, state_dict=tensors, fairseq_version=version,
                             fine_tuned=fine_tuned, head=head)


#: More convolutions than any wav2vec 2.0 has (7); a longer list is refused rather than built.
MAX_CONV_LAYERS = 64


def conv_layers(spec: Any) -> list[tuple[int, int, int]]:
    """fairseq's `conv_feature_layers` ("[(512, 10, 5)] + [(512, 3, 2)] * 4 + ...") as (dim, kernel, stride) triples.

    fairseq evaluates this string as Python; here only list and tuple literals of integers joined by `+` and
    repeated by `* n` are accepted.
    """
    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
                return left + right
            if isinstance(node.op, ast.Mult) and isinstance(left, list) and isinstance(right, int) and (
                    0 <= len(left) * right <= MAX_CONV_LAYERS):
                return left * right
        raise ValueError(ast.dump(node))

    try:
        layers = value(ast.parse(spec, mode="eval").body) if isinstance(spec, str) else list(spec)
        layers = [tuple(int(number) for number in layer) for layer in layers]
    except (SyntaxError, ValueError, TypeError) as error:
        raise FairseqCheckpointError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride) "
                                     f"literals ({error})") from None
    if not 0 < len(layers) <= MAX_CONV_LAYERS or any(len(layer) != 3 for layer in layers):
        raise FairseqCheckpointError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride) triples")
    return layers


def wav2vec2_config(checkpoint: FairseqCheckpoint) -> Wav2Vec2Config:
    """The `Wav2Vec2Config` of the checkpoint's own model settings (architecture, masking, negatives, codebook)."""
    settings = checkpoint.model
    for name, needed in UNSUPPORTED.items():
        # a fine-tune's encoder has lost its quantizer: how its targets were quantized no longer matters
        if checkpoint.fine_tuned and name in ("quantize_targets", "target_glu", "quantizer_depth", "same_quantizer",
                                              "negatives_from_everywhere", "cross_sample_negatives",
                                              "codebook_negatives"):
            continue
        if settings.get(name, needed) != needed:
            raise FairseqCheckpointError(f"{checkpoint.path}: model setting {name}={settings[name]!r} has no "
                                         f"equivalent in transformers' {model_class(checkpoint).__name__} "
                                         f"(needs {needed!r})")
    if settings["extractor_mode"] not in ("default", "layer_norm"):
        raise FairseqCheckpointError(f"{checkpoint.path}: extractor_mode {settings['extractor_mode']!r} is neither "
                                     "'default' (group norm) nor 'layer_norm'")
    if settings["activation_fn"] not in ACTIVATIONS:
        raise FairseqCheckpointError(f"{checkpoint.path}: activation_fn {settings['activation_fn']!r} is not one of "
                                     f"{', '.join(ACTIVATIONS)}")
    layers = conv_layers(settings["conv_feature_layers"])
    hidden = int(settings["encoder_embed_dim"])
    final_dim = int(settings["final_dim"]) or hidden
    codevector_dim = int(settings["latent_dim"]) or final_dim
    loss_weights = checkpoint.criterion.get("loss_weights") or [0.1]
    return Wav2Vec2Config(
        conv_dim=[dim for dim, _, _ in layers],
        conv_kernel=[kernel for _, kernel, _ in layers],
        conv_stride=[stride for _, _, stride in layers],
        conv_bias=bool(settings["conv_bias"]),
        feat_extract_norm="group" if settings["extractor_mode"] == "default" else "layer",
        feat_extract_activation="gelu",
        do_stable_layer_norm=bool(settings["layer_norm_first"]),
        hidden_size=hidden,
        num_hidden_layers=int(settings["encoder_layers"]),
        num_attention_heads=int(settings["encoder_attention_heads"]),
        intermediate_size=int(settings["encoder_ffn_embed_dim"]),
        hidden_act=ACTIVATIONS[settings["activation_fn"]],
        hidden_dropout=float(settings["dropout"]),
        attention_dropout=float(settings["attention_dropout"]),
        activation_dropout=float(settings["activation_dropout"]),
        feat_proj_dropout=float(settings["dropout_input"]),
        feat_quantizer_dropout=float(settings["dropout_features"]),
        layerdrop=float(settings["encoder_layerdrop"]),
        num_conv_pos_embeddings=int(settings["conv_pos"]),
        num_conv_pos_embedding_groups=int(settings["conv_pos_groups"]),
        num_codevector_groups=int(settings["latent_groups"]),
        num_codevectors_per_group=int(settings["latent_vars"]),
        codevector_dim=codevector_dim,
        proj_codevector_dim=final_dim,
        contrastive_logits_temperature=float(settings["logit_temp"]),
        num_negatives=int(settings["num_negatives"]),
        diversity_loss_weight=float(loss_weights[0]),
        mask_time_prob=float(settings["mask_prob"]),
        mask_time_length=int(settings["mask_length"]),
        mask_time_min_masks=2,  # fairseq's compute_mask_indices is always called with min_masks=2
        mask_feature_prob=float(settings["mask_channel_prob"]),
        mask_feature_length=int(settings["mask_channel_length"]),
        architectures=[model_class(checkpoint).__name__],
    )


def model_class(checkpoint: FairseqCheckpoint) -> type:
    """`Wav2Vec2ForPreTraining` for a pretraining checkpoint, `Wav2Vec2Model` for a fine-tune's encoder."""
    return Wav2Vec2Model if checkpoint.fine_tuned else Wav2Vec2ForPreTraining


def feature_extractor(checkpoint: FairseqCheckpoint, config: Wav2Vec2Config) -> Wav2Vec2FeatureExtractor:
    """The feature extractor of the checkpoint's task: its sample rate, normalised input only if it trained so."""
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=int(checkpoint.task.get("sample_rate", 16000)),
        padding_value=0.0,
        do_normalize=bool(checkpoint.task.get("normalize", False)),
        # group-norm feature encoders change their output under zero padding: they take no attention mask
        return_attention_mask=config.feat_extract_norm == "layer",
    )


# --- The weights ------------------------------------------------------------------------------------------------

def weight_names(checkpoint: FairseqCheckpoint, config: Wav2Vec2Config) -> dict[str, str]:
    """transformers' parameter name -> fairseq's, for every parameter of `Wav2Vec2ForPreTraining(config)`, or of
    `Wav2Vec2Model(config)` for a fine-tune's encoder (the `wav2vec2.` prefix and the pretraining modules gone)."""
    names = {"wav2vec2.masked_spec_embed": "mask_emb",
             "wav2vec2.feature_projection.layer_norm.weight": "layer_norm.weight",
             "wav2vec2.feature_projection.layer_norm.bias": "layer_norm.bias",
             "wav2vec2.feature_projection.projection.weight": "post_extract_proj.weight",
             "wav2vec2.feature_projection.projection.bias": "post_extract_proj.bias",
             "wav2vec2.encoder.pos_conv_embed.conv.bias": "encoder.pos_conv.0.bias",
             "wav2vec2.encoder.layer_norm.weight": "encoder.layer_norm.weight",
             "wav2vec2.encoder.layer_norm.bias": "encoder.layer_norm.bias",
             "quantizer.codevectors": "quantizer.vars",
             "quantizer.weight_proj.weight": "quantizer.weight_proj.weight",
             "quantizer.weight_proj.bias": "quantizer.weight_proj.bias",
             "project_q.weight": "project_q.weight", "project_q.bias": "project_q.bias",
             "project_hid.weight": "final_proj.weight", "project_hid.bias": "final_proj.bias"}
    # fairseq's weight norm is saved as weight_g / weight_v, or under torch's newer parametrization names
    old_style = "encoder.pos_conv.0.weight_g" in checkpoint.state_dict
    for index, part in enumerate(("weight_g", "weight_v")):
        names[f"wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original{index}"] = (
            f"encoder.pos_conv.0.{part}" if old_style else f"encoder.pos_conv.0.parametrizations.weight.original{index}")
    for index in range(len(config.conv_dim)):
        ours, theirs = f"wav2vec2.feature_extractor.conv_layers.{index}", f"feature_extractor.conv_layers.{index}"
        names[f"{ours}.conv.weight"] = f"{theirs}.0.weight"
        if config.conv_bias:
            names[f"{ours}.conv.bias"] = f"{theirs}.0.bias"
        norm = f"{theirs}.2.1" if config.feat_extract_norm == "layer" else f"{theirs}.2" if index == 0 else None
        if norm:
            names[f"{ours}.layer_norm.weight"] = f"{norm}.weight"
            names[f"{ours}.layer_norm.bias"] = f"{norm}.bias"
    layer_parts = {"attention.k_proj": "self_attn.k_proj", "attention.v_proj": "self_attn.v_proj",
                   "attention.q_proj": "self_attn.q_proj", "attention.out_proj": "self_attn.out_proj",
                   "layer_norm": "self_attn_layer_norm", "feed_forward.intermediate_dense": "fc1",
                   "feed_forward.output_dense": "fc2", "final_layer_norm": "final_layer_norm"}
    for index in range(config.num_hidden_layers):
        for ours, theirs in layer_parts.items():
            for kind in ("weight", "bias"):
                names[f"wav2vec2.encoder.layers.{index}.{ours}.{kind}"] = f"encoder.layers.{index}.{theirs}.{kind}"
    if checkpoint.fine_tuned:
        # fairseq has mask_emb only when it masks (mask_prob or mask_channel_prob > 0), as transformers does
        return {ours.removeprefix("wav2vec2."): theirs for ours, theirs in names.items()
                if ours.startswith("wav2vec2.") and (ours != "wav2vec2.masked_spec_embed" or theirs in
                                                     checkpoint.state_dict)}
    return names


def converted_state_dict(checkpoint: FairseqCheckpoint, config: Wav2Vec2Config,
                         expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fairseq's tensors under transformers' names; every tensor of the checkpoint used, every shape checked.

    fairseq has no input projection when the last convolution is as wide as the Transformer; transformers always
    has one, which is then the identity.
    """
    names = weight_names(checkpoint, config)
    source = dict(checkpoint.state_dict)
    if "post_extract_proj.weight" not in source and config.conv_dim[-1] == config.hidden_size:
        source["post_extract_proj.weight"] = torch.eye(config.hidden_size)
        source["post_extract_proj.bias"] = torch.zeros(config.hidden_size)
    missing = sorted(theirs for ours, theirs in names.items() if theirs not in source)
    if missing:
        raise FairseqCheckpointError(f"{checkpoint.path}: weights missing from the checkpoint: {', '.join(missing)}")
    left_over = sorted(set(source) - set(names.values()))
    if left_over:
        raise FairseqCheckpointError(f"{checkpoint.path}: weights the transformers model has no place for (their "
                                     f"computation would be lost): {', '.join(left_over[:8])}")
    if set(expected) != set(names):
        raise RuntimeError(f"conversion table and {config.architectures[0]} differ: "
                           f"{sorted(set(expected) ^ set(names))}")
    converted = {}
    for ours, theirs in names.items():
        tensor = source[theirs]
        if tuple(tensor.shape) != tuple(expected[ours].shape):
            raise FairseqCheckpointError(f"{checkpoint.path}: {theirs} has shape {tuple(tensor.shape)}, the settings "
                                         f"give {ours} the shape {tuple(expected[ours].shape)}")
        converted[ours] = tensor.to(torch.float32)
    return converted


def build_model(checkpoint: FairseqCheckpoint) -> Wav2Vec2ForPreTraining | Wav2Vec2Model:
    """`Wav2Vec2ForPreTraining` (`Wav2Vec2Model` for a fine-tune) with the checkpoint's architecture and weights,
    in eval mode."""
    config = wav2vec2_config(checkpoint)
    if checkpoint.fine_tuned and "mask_emb" not in checkpoint.state_dict:
        config.mask_time_prob = config.mask_feature_prob = 0.0
    elif checkpoint.fine_tuned and config.mask_time_prob == 0 and config.mask_feature_prob == 0:
        # the mask embedding replaces masked frames, and this fine-tune masks none: it has no use and no place
        checkpoint.state_dict = {k: v for k, v in checkpoint.state_dict.items() if k != "mask_emb"}
    cls = model_class(checkpoint)
    # shapes first, from a model without storage: settings that disagree with the tensors (or describe a huge model)
    # are refused before anything of their size is allocated
    with torch.device("meta"):
        expected = cls(config).state_dict()
    weights = converted_state_dict(checkpoint, config, expected)
    model = cls(config)
    model.load_state_dict(weights, strict=True)
    return model.eval()


# --- The folder -------------------------------------------------------------------------------------------------

def check_audio(sampling_rate: int) -> torch.Tensor:
    """One second of seeded noise, the input of the conversion's own checks."""
    return torch.randn(1, sampling_rate, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def outputs(model: Wav2Vec2ForPreTraining | Wav2Vec2Model, audio: torch.Tensor) -> dict[str, torch.Tensor]:
    """Final hidden states, projected states and projected quantized states (eval mode, no masking); only the
    first for a `Wav2Vec2Model`."""
    if isinstance(model, Wav2Vec2Model):
        return {"last_hidden_state": model(audio).last_hidden_state}
    out = model(audio)
    return {"last_hidden_state": model.wav2vec2(audio).last_hidden_state, "projected_states": out.projected_states,
            "projected_quantized_states": out.projected_quantized_states}


@dataclass
class Conversion:
    """What `convert_fairseq_checkpoint` wrote and checked."""

    output_dir: Path
    source: Path
    sha256: str
    form: str
    num_tensors: int
    num_parameters: int
    checks: list[str]
    model_class: str = "Wav2Vec2ForPreTraining"
    #: a fine-tune's tensors outside its encoder (its CTC or classification head), left out
    head: list[str] = field(default_factory=list)


def convert_fairseq_checkpoint(checkpoint_path: str | os.PathLike, output_dir: str | os.PathLike) -> Conversion:
    """Write `output_dir`: a `save_pretrained` folder of `Wav2Vec2ForPreTraining` (of `Wav2Vec2Model`, the encoder,
    for a fine-tune, whose head is left out), its feature extractor and a model card naming the source file, its
    SHA-256 and the checks made. The folder appears complete or not at all."""
    output = Path(output_dir)
    # the folder is replaced as a whole: only an empty folder or an earlier conversion may be replaced
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / "config.json").is_file())):
        raise FairseqCheckpointError(f"{output} exists and is not a model folder (no config.json); the output is "
                                     "written as a whole folder, so give a new or empty folder")
    run_files = [name for name in ("checkpoints", "run_settings.json", ".run.lock", "all_results.json")
                 if (output / name).exists()]
    if run_files:
        raise FairseqCheckpointError(f"{output} is a training run's folder (it holds {', '.join(run_files)}); the "
                                     "output replaces its folder as a whole, so give a new or empty folder")
    checkpoint = load_fairseq_checkpoint(checkpoint_path)
    checkpoint.sha256 = file_digest(checkpoint.path)
    model = build_model(checkpoint)
    extractor = feature_extractor(checkpoint, model.config)
    audio = check_audio(extractor.sampling_rate)
    expected = outputs(model, audio)
    not_finite = [name for name, value in expected.items() if not torch.isfinite(value).all()]
    if not_finite:
        raise FairseqCheckpointError(f"{checkpoint.path}: the converted model computes non-finite "
                                     f"{', '.join(not_finite)} on 1 s of noise; the weights are damaged")
    cls = type(model)
    if checkpoint.fine_tuned:
        checks = [
            f"all {len(checkpoint.state_dict)} tensors of the fine-tuned ({checkpoint.fine_tuned}) model's wav2vec 2.0 "
            f"encoder were used, each with the shape its settings give; its head ({len(checkpoint.head)} tensors: "
            f"{', '.join(checkpoint.head)}) was left out",
            f"1 s of seeded noise gives finite hidden states ({expected['last_hidden_state'].shape[1]} frames)",
        ]
    else:
        checks = [
            f"all {len(checkpoint.state_dict)} tensors of the checkpoint's model were used, each with the shape its "
            "settings give, and every weight of the transformers model came from the checkpoint",
            f"1 s of seeded noise gives finite hidden states, projected states and quantized states "
            f"({expected['last_hidden_state'].shape[1]} frames)",
        ]
    with staged_directory(output) as staging, quiet_loading():
        write_model_files(model, staging, extractor)
        reloaded = cls.from_pretrained(staging).eval()
        again = outputs(reloaded, audio)
        difference = max((again[name] - value).abs().max().item() for name, value in expected.items())
        if difference != 0.0:
            raise RuntimeError(f"the saved folder reloads differently from the converted model (by {difference:.2e})")
        checks.append(f"the saved folder reloads as {cls.__name__} giving identical outputs")
        write_model_card(
            staging, "fairseq_import", config=model.config, source_name=checkpoint.path.name,
            sha256=checkpoint.sha256, form=checkpoint.form, fairseq_version=checkpoint.fairseq_version,
            num_parameters=model.num_parameters(), num_tensors=len(checkpoint.state_dict), checks=checks,
            do_normalize=extractor.do_normalize, sampling_rate=extractor.sampling_rate,
            latent_temp=checkpoint.model["latent_temp"],
            feature_grad_mult=checkpoint.model["feature_grad_mult"],
            fine_tuned=checkpoint.fine_tuned, head=checkpoint.head, tags=["audio", "music", "wav2vec2", "fairseq"])
    return Conversion(output_dir=output.resolve(), source=checkpoint.path, sha256=checkpoint.sha256,
                      form=checkpoint.form, num_tensors=len(checkpoint.state_dict),
                      num_parameters=model.num_parameters(), checks=checks, model_class=cls.__name__,
                      head=checkpoint.head)


__all__ = ["Conversion", "FairseqCheckpoint", "FairseqCheckpointError", "STAND_INS", "build_model",
           "conv_layers", "convert_fairseq_checkpoint", "feature_extractor", "load_fairseq_checkpoint",
           "read_checkpoint_file", "wav2vec2_config", "weight_names"]
