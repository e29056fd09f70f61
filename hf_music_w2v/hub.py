"""The Hub's side of a model: feature extractor, `save_pretrained` folders, model cards and uploads."""

import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor

from .atomic import move_files_into, staged_directory, write_text_atomic, writing
from .audio import SAMPLING_RATE


def music_feature_extractor(config: Wav2Vec2Config) -> Wav2Vec2FeatureExtractor:
    """The 16 kHz, zero-mean unit-variance feature extractor matching `config`'s backbone.

    Group-norm feature encoders (wav2vec2-base) change their output under zero padding and take no attention
    mask, so the extractor asks for a mask only for layer-norm backbones.
    """
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLING_RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=getattr(config, "feat_extract_norm", "layer") == "layer",  # data2vec-audio: always layer
    )


def model_location_problem(name: str) -> str | None:
    """Why `name` cannot be a model (no such folder and not a Hub id; a folder without config.json), or None."""
    path = Path(name)
    if path.is_dir() and not (path / "config.json").is_file():
        return (f"{name} has no config.json; MODEL must be a save_pretrained folder (e.g. the output of "
                "hf-music-w2v finetune or pretrain) or a Hub id")
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not path.exists() and not looks_like_hub_id:
        return f"no model folder {name}, and it is not a Hub id of the form owner/name"
    return None


def write_model_files(model: PreTrainedModel, folder: Path, feature_extractor: Wav2Vec2FeatureExtractor | None) -> None:
    """`save_pretrained` of `model` (safetensors, config, code files if registered) and its feature extractor."""
    model.save_pretrained(folder)
    (feature_extractor or music_feature_extractor(model.config)).save_pretrained(folder)


def save_pretrained_atomic(
    model: PreTrainedModel,
    save_directory: str | os.PathLike,
    feature_extractor: Wav2Vec2FeatureExtractor | None = None,
) -> Path:
    """Write `model` (safetensors, config.json, code files if registered) and its feature extractor.

    Everything is written into a temporary sibling folder first and moved into place at the end, so a crash
    leaves either the previous folder or the new one, never a mixture. Returns the folder's path.
    """
    with staged_directory(save_directory) as staging:
        write_model_files(model, staging, feature_extractor)
    return Path(save_directory).resolve()


def save_pretrained_into(
    model: PreTrainedModel,
    save_directory: str | os.PathLike,
    feature_extractor: Wav2Vec2FeatureExtractor | None = None,
) -> Path:
    """Like `save_pretrained_atomic`, but into a folder that holds other things too (logs, checkpoints).

    The files are written to a temporary folder and then renamed into `save_directory` one by one, so each file
    is either the old version or the complete new one; other files in the folder are left alone.
    """
    target = Path(save_directory).resolve()
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".save_pretrained.tmp-", dir=target))
    try:
        with writing(target):
            write_model_files(model, staging, feature_extractor)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a half-written model must not linger beside the run's files
        raise
    move_files_into(staging, target)
    return target


def write_model_card(folder: str | os.PathLike, template: str, **fields: Any) -> Path:
    """Render the packaged Jinja template `model_cards/<template>.md` into `folder/README.md`.

    Rendering uses huggingface_hub's `ModelCard` API.
    `fields` are the template's variables; those that are also `ModelCardData` fields (license, tags, datasets,
    pipeline_tag, model-index results via `eval_results`, ...) go into the card's YAML header as well.
    """
    from huggingface_hub import ModelCard, ModelCardData

    template_file = resources.files(__package__) / "model_cards" / f"{template}.md"
    if not template_file.is_file():
        raise FileNotFoundError(f"model card template {template!r} not found in the package's model_cards/")
    data_fields = {k: fields[k] for k in ("license", "tags", "datasets", "pipeline_tag", "model_name",
                                          "eval_results", "base_model", "library_name", "widget") if k in fields}
    data_fields.setdefault("license", "apache-2.0")
    data_fields.setdefault("library_name", "transformers")
    card = ModelCard.from_template(ModelCardData(**data_fields), template_str=template_file.read_text(), **fields)
    path = Path(folder) / "README.md"
    write_text_atomic(path, str(card))
    return path


def push_folder(folder: str | os.PathLike, repo_id: str, token: str | None = None,
                commit_message: str = "Upload model", ignore_patterns: list[str] | None = None) -> str:
    """Create `repo_id` if needed and upload `folder` to it, without checkpoints; returns the commit URL.

    The Hub address comes from `HF_ENDPOINT` (default https://huggingface.co), so a mirror or a local test
    server works the same way.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        ignore_patterns=ignore_patterns or ["checkpoints/*", ".*", "**/.*"],
    )
    return commit.commit_url
