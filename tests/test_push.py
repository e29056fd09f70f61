"""Uploading runs: the Hub checked before training, `hf-music-w2v push RUN_DIR`, and a failed upload retried.

Everything goes to the loopback Hub (tests/hub_server.py) through `HF_ENDPOINT`, with the real command line.
"""

import shlex
import socket
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

from hf_music_w2v.hub import CARD_PLACEHOLDER, FINISHED_RUN_FILES, card_for_repository
from hf_music_w2v.training.layout import RunLayout

from .conftest import PRETRAIN_BASE_ARGS, program_env, run_program
from .hub_server import LoopbackHub
from .test_cli_errors import assert_one_error_line


def hub_vars(hub_url: str, home) -> dict:
    """The environment that sends a process to the Hub at `hub_url` with the loopback's write token."""
    return {"HF_ENDPOINT": hub_url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(home), "HF_TOKEN": "hf_loopback",
            "HF_HUB_DISABLE_TELEMETRY": "1"}


def cli(*args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hf_music_w2v.cli", *args], capture_output=True, text=True,
                          timeout=600, env=program_env(**env))


def closed_port_url() -> str:
    """The address of a port nothing listens on: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def pretrain(mini_root, config_file, out, *extra) -> list[str]:
    """Arguments of a 2-update tiny pretraining run (`python -m hf_music_w2v.training.pretrain`: no launcher,
    which `tests/test_cli_errors.py` goes through)."""
    return ["--musicnet_dir", str(mini_root / "musicnet"), "--config_name", str(config_file),
            *PRETRAIN_BASE_ARGS, "--max_train_steps", "2", "--checkpointing_steps", "2", "--report_to", "none",
            "--output_dir", str(out), *extra]


def published(folder) -> dict[str, bytes]:
    """The files of a run folder that an upload carries: no working folders, no dot files."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).parts[0] not in RunLayout.WORKING_DIRS
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


#: A token given on the command line, which must end up in no file of the run.
SECRET = "hf_given_with_hub_token"


@pytest.fixture
def hub(tmp_path):
    server = LoopbackHub(tmp_path / "hub", tokens={"hf_loopback": "write", "hf_read_only": "read"}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def failed_upload(tmp_path_factory, mini_root, tiny_config_file):
    """A tiny pretraining run with --push_to_hub whose upload the Hub refuses after the check passed. Its token
    is given with --hub_token."""
    root = tmp_path_factory.mktemp("failed_upload")
    server = LoopbackHub(root / "hub", tokens={SECRET: "write"}).start()
    server.refuse_commits = True
    out = root / "out"
    try:
        result = run_program("pretrain", pretrain(mini_root, tiny_config_file, out, "--push_to_hub", "--hub_model_id",
                                                  "me/w2v-music", "--hub_token", SECRET),
                             **{**hub_vars(server.url, root / "hf_home"), "HF_TOKEN": ""})
    finally:
        server.stop()
    return {"result": result, "out": out, "hub": server}


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, failed_upload, mini_root):
    """A tiny fine-tuning run (one epoch of a linear probe on the pretraining run) that was not pushed."""
    out = tmp_path_factory.mktemp("classifier") / "out"
    result = cli("finetune", "--model_name_or_path", str(failed_upload["out"]), "--nsynth_dir",
                 str(mini_root / "nsynth"), "--output_dir", str(out), "--report_to", "none", "--num_train_epochs", "1",
                 "--freeze_base_model", "--per_device_train_batch_size", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_an_unreachable_hub_stops_a_pushing_run_before_it_reads_any_data(tmp_path, tiny_config_file):
    # The data folder does not exist: the Hub's error comes first, so nothing was read.
    out = tmp_path / "out"
    result = run_program("pretrain", pretrain(tmp_path, tiny_config_file, out, "--push_to_hub", "--hub_model_id",
                                              "me/w2v"), **hub_vars(closed_port_url(), tmp_path / "hf_home"))
    assert_one_error_line(result, "uploading to me/w2v: cannot reach the Hub at http://127.0.0.1:")
    assert not RunLayout(out).settings.exists() and not RunLayout(out).checkpoints.exists()


def test_a_failed_upload_keeps_the_finished_run_and_says_how_to_retry(failed_upload):
    out = failed_upload["out"]
    line = assert_one_error_line(failed_upload["result"], f"uploading {out} to me/w2v-music failed",
                                 "answered 500", "The run is finished and kept")
    assert line.endswith(f"run: hf-music-w2v push {out} --hub_model_id me/w2v-music")
    assert RunLayout(out).is_finished()
    assert not any(failed_upload["hub"].repo_dir("me/w2v-music").iterdir())  # created by the check, nothing in it


def test_the_token_given_on_the_command_line_is_in_no_file_of_the_run(failed_upload):
    files = [p for p in failed_upload["out"].rglob("*") if p.is_file()]
    assert any(p.name == "README.md" for p in files) and any(p.name == "run_settings.json" for p in files)
    assert [p for p in files if SECRET.encode() in p.read_bytes()] == []


def test_the_retry_command_uploads_the_run_as_the_run_would_have(failed_upload, hub, tmp_path):
    out = failed_upload["out"]
    line = assert_one_error_line(failed_upload["result"])
    retry = shlex.split(line.split("to upload it, run: ", 1)[1])
    assert retry[:2] == ["hf-music-w2v", "push"]
    result = cli(*retry[1:], **hub_vars(hub.url, tmp_path / "hf_home"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"pushed to {hub.url}/me/w2v-music/commit/" in result.stdout
    received = hub.repo_dir("me/w2v-music")
    assert published(received) == published(out)
    assert {"model.safetensors", "config.json", "README.md", "all_results.json"} <= set(published(received))
    assert not (received / "checkpoints").exists()


def test_resuming_a_finished_run_with_push_to_hub_uploads_it(failed_upload, hub, mini_root, tiny_config_file,
                                                            tmp_path):
    out = failed_upload["out"]
    before = RunLayout(out).results.read_bytes()
    result = run_program("pretrain", pretrain(mini_root, tiny_config_file, out, "--push_to_hub", "--hub_model_id",
                                              "me/w2v-music", "--resume_from_checkpoint", "latest"),
                         **hub_vars(hub.url, tmp_path / "hf_home"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "holds a finished run (all_results.json); nothing to train, uploading it" in result.stdout
    assert published(hub.repo_dir("me/w2v-music")) == published(out)
    assert RunLayout(out).results.read_bytes() == before


@pytest.mark.slow
def test_push_uploads_a_classifier_with_its_two_widget_repositories(classifier_run, hub, tmp_path):
    card_before = (classifier_run / "README.md").read_text()
    result = cli("push", str(classifier_run), "--hub_model_id", "me/w2v-nsynth", **hub_vars(hub.url, tmp_path / "hf"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("pushed to ") == 3
    received = published(hub.repo_dir("me/w2v-nsynth"))
    assert "modeling_music_wav2vec2.py" in received
    assert received == {**published(classifier_run), "README.md": received["README.md"]}
    for head in ("pitch", "instrument"):
        widget = published(hub.repo_dir(f"me/w2v-nsynth-{head}"))
        assert {"model.safetensors", "config.json", "README.md"} <= set(widget)
        assert widget == {**published(classifier_run / "widget" / head), "README.md": widget["README.md"]}
    # The run had no --hub_model_id: its cards name a placeholder, and the uploaded ones the repositories.
    assert CARD_PLACEHOLDER in card_before and (classifier_run / "README.md").read_text() == card_before
    card = received["README.md"].decode()
    assert CARD_PLACEHOLDER not in card and 'AutoModel.from_pretrained("me/w2v-nsynth", trust_remote_code=True)' in card
    assert card == card_for_repository(card_before, "me/w2v-nsynth")
    widget_card = ModelCard.load(hub.repo_dir("me/w2v-nsynth-pitch") / "README.md")
    assert 'pipeline("audio-classification", model="me/w2v-nsynth-pitch")' in widget_card.text
    assert all("/me/w2v-nsynth-pitch/resolve/main/widget_samples/" in entry["src"]
               for entry in widget_card.data.widget)
    assert not [p for p in classifier_run.iterdir() if p.name.startswith(".push")]


def test_a_card_names_the_repository_it_is_uploaded_to():
    text = ('from_pretrained("me/w2v") [me/w2v](../me/w2v) me/w2v-pitch me/w2v-base me/w2v2 me/w2v. '
            f"{CARD_PLACEHOLDER}-instrument https://hub/{CARD_PLACEHOLDER}/resolve/main/a.wav")
    assert card_for_repository(text, "you/x", written_for="me/w2v") == (
        'from_pretrained("you/x") [you/x](../you/x) you/x-pitch me/w2v-base me/w2v2 you/x. '
        "you/x-instrument https://hub/you/x/resolve/main/a.wav")
    assert card_for_repository(text, "me/w2v", written_for="me/w2v") == text.replace(CARD_PLACEHOLDER, "me/w2v")


@pytest.mark.parametrize("case", ["no final model", "no folder", "offline", "unreachable", "no token",
                                  "invalid token", "read-only token", "another user's namespace", "not a repository id"])
def test_a_push_that_cannot_work_is_one_line_and_uploads_nothing(case, failed_upload, hub, tmp_path):
    out = failed_upload["out"]
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    env = hub_vars(hub.url, tmp_path / "hf_home")
    run_dir, repo, extra, expected = {
        "no final model": (unfinished, "me/w2v", {},
                           (f"{unfinished} holds no finished run: no {', '.join(FINISHED_RUN_FILES)}",
                            "--resume_from_checkpoint latest")),
        "no folder": (tmp_path / "nowhere", "me/w2v", {}, (f"no run folder {tmp_path / 'nowhere'}",)),
        "offline": (out, "me/w2v", {"HF_HUB_OFFLINE": "1"}, ("uploading to me/w2v: HF_HUB_OFFLINE is set",)),
        "unreachable": (out, "me/w2v", {"HF_ENDPOINT": closed_port_url()}, ("cannot reach the Hub at",)),
        "no token": (out, "me/w2v", {"HF_TOKEN": ""}, ("no Hub token", "--hub_token")),
        "invalid token": (out, "me/w2v", {"HF_TOKEN": "hf_wrong"}, ("refused the token (401",)),
        "read-only token": (out, "me/w2v", {"HF_TOKEN": "hf_read_only"}, ("read-only", "write access")),
        "another user's namespace": (out, "someone-else/w2v", {},
                                     ("--hub_model_id someone-else/w2v", "cannot write to someone-else")),
        "not a repository id": (out, "me/my model", {}, ("me/my model",)),
    }[case]
    result = cli("push", str(run_dir), "--hub_model_id", repo, **{**env, **extra})
    assert_one_error_line(result, *expected)
    assert not any(path.is_file() for path in hub.root.rglob("*"))
