"""The Hub's side of a model: feature extractor, `save_pretrained` folders, model cards, the check before a run
that uploads, and the upload of a finished run."""

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor
from transformers.utils import logging

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
        return (f"{name} has no config.json; expected a save_pretrained folder (e.g. the output of "
                "hf-music-w2v finetune or pretrain) or a Hub id")
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not path.exists() and not looks_like_hub_id:
        return f"no model folder {name}, and it is not a Hub id of the form owner/name"
    return None


#: Weights of a pretraining output that an encoder or a classifier has no use for.
PRETRAINING_ONLY = ("quantizer.", "project_hid.", "project_q.")

logger = logging.get_logger(__name__)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' load report, model-type notice and progress bar off: `load_pretrained` says what matters."""
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def load_pretrained(model_class, name: str, expected_missing: tuple[str, ...] = (),
                    expected_unused: tuple[str, ...] = PRETRAINING_ONLY, **kwargs) -> PreTrainedModel:
    """`model_class.from_pretrained(name, **kwargs)`, quiet about the weights a load of this package's outputs
    leaves out or initialises by design (`expected_*`: key prefixes); any other missing, unused or reshaped
    weight is one warning naming them."""
    with quiet_loading():
        model, info = model_class.from_pretrained(name, output_loading_info=True, **kwargs)
    missing = [key for key in info["missing_keys"] if not key.startswith(expected_missing)]
    unused = [key for key in info["unexpected_keys"] if not key.startswith(expected_unused)]
    if missing or unused or info["mismatched_keys"]:
        logger.warning(f"{name}: weights not found (initialised at random): {missing or 'none'}; "
                       f"weights not used: {unused or 'none'}; shapes that differ: {info['mismatched_keys'] or 'none'}")
    return model


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


class HubError(OSError):
    """The Hub cannot be reached, refuses the token, or will not take the repository; the message says which."""


def widget_repo_id(repo_id: str, head: str) -> str:
    """The repository of a classifier's `head` exported for the inference widget: `USER/NAME-pitch`, ..."""
    return f"{repo_id}-{head}"


def run_repo_ids(repo_id: str, heads: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Every repository a run uploads to: the model's, then one per widget head."""
    return [repo_id, *(widget_repo_id(repo_id, head) for head in heads)]


def hub_failure(error: Exception) -> str:
    """One line saying what went wrong talking to the Hub at `HF_ENDPOINT`."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled
    from huggingface_hub.utils import httpx

    said = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so the Hub is not contacted (unset it, or set HF_HUB_OFFLINE=0)"
    if isinstance(error, LocalTokenNotFoundError):
        return ("no Hub token: give --hub_token, set HF_TOKEN, or log in with `hf auth login` (a token with write "
                "access)")
    status = error.response.status_code if isinstance(error, HfHubHTTPError) and error.response is not None else None
    if status == 401:
        return (f"the Hub at {constants.ENDPOINT} refused the token (401 Unauthorized): give a valid --hub_token, "
                "HF_TOKEN or `hf auth login`")
    if status is not None:
        return f"the Hub at {constants.ENDPOINT} answered {status}: {said}"
    if isinstance(error, (httpx.TransportError, ConnectionError)):
        return f"cannot reach the Hub at {constants.ENDPOINT} ({said})"
    return said


def hub_errors() -> tuple[type[BaseException], ...]:
    """What talking to the Hub raises: huggingface_hub's HTTP errors, the HTTP client's (a refused connection is
    not an `OSError` there), and `OSError`s (no token, offline mode, files)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import httpx  # huggingface_hub's HTTP client, under the name it keeps stable

    return (httpx.HTTPError, HFValidationError, OSError)  # HFValidationError: a repository id that is no id


def check_hub_access(repo_ids: list[str], token: str | None = None) -> str:
    """Before anything is trained: the Hub answers, the token is valid and may write, and each repository exists
    or can be created (it is created now, empty, as transformers' `Trainer` does). Returns the user's name;
    raises `HubError` saying what is wrong.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    api = HfApi(token=token)
    try:
        if constants.HF_HUB_OFFLINE:  # said first: offline, a missing token is beside the point
            raise OfflineModeIsEnabled("HF_HUB_OFFLINE is set")
        user = api.whoami()
    except hub_errors() as error:
        raise HubError(f"uploading to {repo_ids[0]}: {hub_failure(error)}") from error
    name = user.get("name", "")
    role = user.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise HubError(f"uploading to {repo_ids[0]}: the Hub token of {name} is read-only; uploading needs a token "
                       "with write access (--hub_token, HF_TOKEN or `hf auth login`)")
    namespaces = [name, *(org.get("name") for org in user.get("orgs", []))]
    for repo_id in repo_ids:
        namespace = repo_id.split("/")[0] if "/" in repo_id else name
        if namespace not in namespaces:
            raise HubError(f"--hub_model_id {repo_id}: the token belongs to {name}, who cannot write to {namespace} "
                           f"(it can write to {', '.join(namespaces)})")
        try:
            api.create_repo(repo_id, exist_ok=True)
        except hub_errors() as error:
            raise HubError(f"--hub_model_id {repo_id}: the repository cannot be created or written: "
                           f"{hub_failure(error)}") from error
    return name


def push_folder(folder: str | os.PathLike, repo_id: str, token: str | None = None,
                commit_message: str = "Upload model", ignore_patterns: list[str] | None = None,
                card: str | None = None) -> str:
    """Create `repo_id` if needed and upload `folder` to it, without checkpoints; returns the commit URL.

    `card`: the README.md to upload instead of the folder's (which is left as it is). The Hub address comes
    from `HF_ENDPOINT` (default https://huggingface.co), so a mirror or a local test server works the same way.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True)
    ignore_patterns = ignore_patterns or ["checkpoints/*", ".*", "**/.*"]
    if card is None:
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                 ignore_patterns=ignore_patterns).commit_url
    # One commit with the other card: a copy of the folder made of hard links (no data copied), in a dot folder
    # inside it (same file system; dot files are never uploaded), with its own README.md.
    with tempfile.TemporaryDirectory(prefix=".push.tmp-", dir=folder) as staging:
        copy = Path(staging) / "upload"
        shutil.copytree(folder, copy, copy_function=link_or_copy,
                        ignore=shutil.ignore_patterns(".*", "checkpoints", "features", "best_model", "widget"))
        (copy / "README.md").unlink(missing_ok=True)  # a link to the run's card: replaced, not written through
        (copy / "README.md").write_text(card)
        return api.upload_folder(repo_id=repo_id, folder_path=str(copy), commit_message=commit_message,
                                 ignore_patterns=ignore_patterns).commit_url


def link_or_copy(source: str, target: str) -> None:
    """A hard link where the file system has them, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


#: What a model card says where its repository's name goes when the run was not given one (`--hub_model_id`).
CARD_PLACEHOLDER = "PATH_OR_HUB_ID"


def card_for_repository(text: str, repo_id: str, written_for: str | None = None) -> str:
    """A run's model card naming `repo_id` where it names the placeholder, or `written_for` (the repository the
    run was given, if another); names of widget repositories (`-pitch`, `-instrument`) follow."""
    from .training.layout import HEADS

    heads = "|".join(f"-{head}" for head in HEADS)
    for name in {CARD_PLACEHOLDER, written_for or CARD_PLACEHOLDER} - {repo_id}:
        text = re.sub(rf"(?<![\w.-]){re.escape(name)}(?=(?:{heads})?(?![\w-]|\.\w))", repo_id, text)
    return text


#: The files that make a run folder a finished run: the final model and the results, which are written last.
FINISHED_RUN_FILES = ("config.json", "model.safetensors", "all_results.json")


def finished_run_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` holds no finished run to upload (no folder; no final model or results), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"no run folder {folder}"
    missing = [name for name in FINISHED_RUN_FILES if not (folder / name).is_file()]
    if missing:
        return (f"{folder} holds no finished run: no {', '.join(missing)} (written when training ends; a run cut "
                "off before then continues with its command and --resume_from_checkpoint latest)")
    return None


def run_widget_heads(folder: str | os.PathLike) -> list[str]:
    """The heads a finished classifier run exported for the inference widget (`widget/<head>/`); none for a
    pretraining run."""
    from .training.layout import HEADS, RunLayout

    return [head for head in HEADS if (RunLayout(folder).widget / head / "config.json").is_file()]


def run_commit_message(folder: Path) -> str:
    """What the upload of a finished run says it is: pretrained or fine-tuned, and for how many updates."""
    steps = json.loads((folder / "all_results.json").read_text()).get("steps")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    done = "fine-tuned on NSynth" if model_type == "music_wav2vec2" else "pretrained"
    return f"wav2vec2 {done} ({steps} updates)"


def push_run(folder: str | os.PathLike, repo_id: str, token: str | None = None) -> list[str]:
    """Upload a finished run: the model folder to `repo_id` without its working state (checkpoints, features,
    best model, widget exports, dot files), and a classifier's widget models to `repo_id-pitch` and
    `repo_id-instrument`. Returns the commit URLs.

    The one upload of a run: `--push_to_hub` at the end of training and `hf-music-w2v push` both call it, so a
    run uploaded later is uploaded as it would have been. Cards written without a repository name, or for
    another repository, are uploaded naming `repo_id` (the run's own are left as they are). A failed upload
    raises `HubError` saying how to retry.
    """
    from .training.layout import RunLayout

    layout = RunLayout(folder)
    problem = finished_run_problem(layout.root)
    if problem:
        raise FileNotFoundError(problem)
    retry = f"hf-music-w2v push {layout.root} --hub_model_id {repo_id}"
    written_for = json.loads(layout.settings.read_text()).get("hub_model_id") if layout.settings.is_file() else None

    def card(folder: Path) -> str | None:
        """The folder's card for `repo_id`, if it names another repository or none."""
        path = folder / "README.md"
        text = path.read_text() if path.is_file() else None
        retargeted = text and card_for_repository(text, repo_id, written_for)
        return retargeted if retargeted != text else None

    urls = []
    try:
        urls.append(push_folder(layout.root, repo_id, token=token, commit_message=run_commit_message(layout.root),
                                ignore_patterns=[*(f"{name}/*" for name in layout.WORKING_DIRS), ".*", "**/.*"],
                                card=card(layout.root)))
        for head in run_widget_heads(layout.root):
            urls.append(push_folder(layout.widget / head, widget_repo_id(repo_id, head), token=token,
                                    commit_message=f"{head} head as Wav2Vec2ForSequenceClassification",
                                    card=card(layout.widget / head)))
    except hub_errors() as error:
        raise HubError(f"uploading {layout.root} to {repo_id} failed: {hub_failure(error)}. The run is finished "
                       f"and kept; to upload it, run: {retry}") from error
    return urls
