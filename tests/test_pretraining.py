import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import Wav2Vec2ForPreTraining

from hf_music_w2v.training.arguments import RunArguments
from hf_music_w2v.training.checkpoints import list_checkpoints
from hf_music_w2v.training.engine import (
    NonFiniteGuard,
    TrainingDiverged,
    UpdateBatchSampler,
    build_optimizer,
    seeded_generator,
)
from hf_music_w2v.training.pretrain import (
    compile_static_parts,
    contrastive_loss,
    gumbel_temperature,
    pretraining_batch,
    pretraining_losses,
    pretraining_update,
    sample_negatives,
    span_mask,
)

from .conftest import PRETRAIN_BASE_ARGS, tiny_pretraining_config

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "training" / "pretrain.py"
BASE_ARGS = PRETRAIN_BASE_ARGS
COMPARED_METRICS = ("loss", "contrastive_loss", "diversity_loss", "codevector_perplexity", "grad_norm",
                    "learning_rate", "gumbel_temperature", "masked_frames_percent", "epoch")


def script_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    return env


def run_script(args, env=None, timeout=300, launcher=None):
    command = (launcher or [sys.executable]) + [str(SCRIPT), *args]
    return subprocess.run(command, env=env or script_env(), capture_output=True, text=True, timeout=timeout)


def read_metrics(output_dir: Path) -> list[dict]:
    lines = (output_dir / "logs" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_span_mask_follows_the_recipe():
    mask = span_mask(500, 0.65, 10, 2, seeded_generator(1))
    assert mask.dtype == torch.bool and mask.shape == (500,)
    assert 0.3 < mask.float().mean() <= 0.66  # overlapping spans make 0.65 an upper bound
    short = span_mask(25, 0.01, 10, 2, seeded_generator(1))
    assert short.sum() >= 10  # min_masks spans even when mask_prob asks for none
    assert torch.equal(span_mask(500, 0.65, 10, 2, seeded_generator(7)), span_mask(500, 0.65, 10, 2, seeded_generator(7)))
    assert not torch.equal(span_mask(500, 0.65, 10, 2, seeded_generator(7)), span_mask(500, 0.65, 10, 2, seeded_generator(8)))


def test_span_mask_rejects_spans_longer_than_the_example():
    with pytest.raises(ValueError, match="mask_time_length 10 is longer than the 5 frames"):
        span_mask(5, 0.65, 10, 2, seeded_generator(0))


def test_negatives_are_other_masked_frames_of_the_same_example():
    mask = span_mask(300, 0.65, 10, 2, seeded_generator(3))
    negatives = sample_negatives(mask, 50, seeded_generator(4))
    masked = mask.nonzero().squeeze(1)
    chosen = negatives[masked]
    assert mask[chosen].all()
    assert (chosen != masked[:, None]).all()
    # Uniform over the other masked frames: every masked frame is drawn as someone's negative.
    assert set(chosen.flatten().tolist()) == set(masked.tolist())


def test_batch_inputs_depend_on_each_examples_key_not_on_its_batch():
    config = tiny_pretraining_config()
    audio = torch.randn(4, 6000, generator=torch.Generator().manual_seed(0))
    keys = [(0, 0, i) for i in range(4)]
    whole = pretraining_batch(audio, keys, config, crop_samples=4000)
    tail = pretraining_batch(audio[2:], keys[2:], config, crop_samples=4000)
    assert whole["input_values"].shape == (4, 4000)
    frames = whole["mask_time_indices"].shape[1]
    assert torch.equal(whole["mask_time_indices"][2:], tail["mask_time_indices"])
    assert torch.allclose(whole["input_values"][2:], tail["input_values"])
    # Negatives index the flattened [batch * frame] features: row r's point into row r only.
    assert torch.equal(whole["sampled_negative_indices"][2:] - 2 * frames, tail["sampled_negative_indices"])
    assert torch.allclose(whole["input_values"].mean(-1), torch.zeros(4), atol=1e-5)


def test_update_batches_are_the_same_for_any_split():
    single = list(UpdateBatchSampler(20, 4, seed=3, epoch=1))
    ranks = [list(UpdateBatchSampler(20, 2, seed=3, epoch=1, num_processes=2, process_index=r)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == single
    accumulated = list(UpdateBatchSampler(20, 1, seed=3, epoch=1, accumulation_steps=4))
    assert [sum(accumulated[i : i + 4], []) for i in range(0, 20, 4)] == list(UpdateBatchSampler(20, 4, 3, 1))
    assert list(UpdateBatchSampler(20, 4, 3, 1, start=2)) == single[2:]
    assert list(UpdateBatchSampler(20, 4, 3, 2)) != single


def test_update_batch_sampler_needs_one_full_update():
    with pytest.raises(ValueError, match="3 training examples are fewer than one update needs"):
        UpdateBatchSampler(3, 2, 0, 0, num_processes=2)


def test_gumbel_temperature_decays_to_its_floor():
    assert gumbel_temperature(0) == 2.0
    assert gumbel_temperature(1000) == pytest.approx(2.0 * 0.999995**1000)
    assert gumbel_temperature(10_000_000) == 0.5


@pytest.mark.parametrize("codevectors", [320, 2], ids=["codebook", "collapsed-codebook"])
def test_the_fast_contrastive_loss_is_transformers_loss(codevectors):
    """Same loss, same gradients as `Wav2Vec2ForPreTraining`'s own, also when negatives repeat their positive."""
    # With 2 codes in each of 2 groups, a quarter of the negatives carry their positive's vector, which both
    # losses must exclude; the test checks that such negatives occur.
    config = tiny_pretraining_config(num_codevectors_per_group=codevectors, num_codevector_groups=2,
                                     num_negatives=20)
    audio = torch.randn(3, 6000, generator=torch.Generator().manual_seed(1))
    batch = pretraining_batch(audio, [(0, 0, i) for i in range(3)], config)
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(config).train()
    results = {}
    for fast in (False, True):
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout and Gumbel draws for both
        losses = pretraining_losses(model, batch, config, fast_loss=fast)
        losses.loss.backward()
        results[fast] = (losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (reference, reference_grads), (fast, fast_grads) = results[False], results[True]
    for name in ("loss", "contrastive_loss", "diversity_loss", "codevector_perplexity"):
        torch.testing.assert_close(getattr(fast, name), getattr(reference, name), rtol=1e-5, atol=1e-4, msg=name)
    assert fast_grads.keys() == reference_grads.keys()
    # fp32 rounding: transformers' own loss, run twice, differs by about 1e-7 of the largest gradient.
    scale = max(float(grad.abs().max()) for grad in reference_grads.values())
    for name, grad in reference_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=2e-6 * scale, msg=name)

    torch.manual_seed(1)
    output = model(batch["input_values"], mask_time_indices=batch["mask_time_indices"])
    quantized = output.projected_quantized_states.detach().flatten(0, 1)
    masked = batch["mask_time_indices"].flatten().nonzero().squeeze(1)
    negatives = batch["sampled_negative_indices"].flatten(0, 1)[masked]
    repeats = (quantized[negatives] == quantized[masked][:, None]).all(-1).float().mean()
    assert repeats > 0.05 or codevectors > 2


def test_the_fast_contrastive_loss_refuses_negatives_from_another_example():
    mask = torch.ones(2, 4, dtype=torch.bool)
    negatives = torch.zeros(2, 4, 3, dtype=torch.long)  # example 1's negatives point into example 0
    with pytest.raises(ValueError, match="same example"):
        contrastive_loss(torch.randn(2, 4, 8), torch.randn(2, 4, 8), mask, negatives, 0.1)


def reset_accelerate_state() -> None:
    """accelerate keeps one process-wide state whose mixed precision cannot change; comparing several needs a reset."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def fresh_accelerate_state():
    yield
    reset_accelerate_state()  # leave the default state to the tests that follow


def updates_with(options: dict, config, batches) -> list[float]:
    """The pretraining loss of each of `batches`, an update after each, under the engine's speed `options`."""
    from accelerate import Accelerator

    reset_accelerate_state()
    accelerator = Accelerator(cpu=True, mixed_precision=options.get("mixed_precision", "no"))
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(config).eval()  # deterministic forward: the options alone differ
    run = RunArguments(output_dir="unused", learning_rate=1e-3,
                       adamw_implementation=options.get("adamw_implementation", "for-loop"))
    optimizer = build_optimizer([{"params": list(model.parameters())}], run)
    if options.get("torch_compile"):
        compile_static_parts(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    return [pretraining_update(accelerator, model, optimizer, [batch], 25.0, options.get("fast_loss", False)).loss
            for batch in batches]


SPEED_OPTIONS = {  # option -> (engine settings, relative tolerance on the loss against fp32 eager)
    "fast-loss": ({"fast_loss": True}, 1e-5),
    "fused-adamw": ({"adamw_implementation": "fused"}, 1e-5),
    "foreach-adamw": ({"adamw_implementation": "foreach"}, 1e-5),
    "bf16": ({"mixed_precision": "bf16"}, 2e-2),
    "compile": ({"torch_compile": True}, 1e-4),
    "all": ({"fast_loss": True, "adamw_implementation": "fused", "mixed_precision": "bf16", "torch_compile": True},
            2e-2),
}


@pytest.mark.parametrize("option", SPEED_OPTIONS)
def test_each_speed_option_computes_the_fp32_eager_update(option, fresh_accelerate_state):
    """The loss before and after one update agrees with fp32 eager (transformers' loss, for-loop AdamW); finite over
    a short run. bf16 rounds activations to 8 bits of mantissa, hence its looser tolerance."""
    config = tiny_pretraining_config()
    audio = torch.randn(5, 2, 6000, generator=torch.Generator().manual_seed(3))
    batches = [pretraining_batch(audio[i], [(0, i, 0), (0, i, 1)], config) for i in range(5)]
    reference = updates_with({}, config, batches[:2])
    settings, tolerance = SPEED_OPTIONS[option]
    losses = updates_with(settings, config, batches)
    assert losses[:2] == pytest.approx(reference, rel=tolerance)
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[0] != losses[1]  # the update changed the model


def one_update(micro_batches, config, optimizer_class=torch.optim.SGD):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(config).eval()  # deterministic forward, see tests/ddp_update_helper.py
    optimizer = optimizer_class(model.parameters(), lr=1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    stats = pretraining_update(accelerator, model, optimizer, micro_batches, max_grad_norm=None)
    return model, stats


def test_accumulation_gives_the_update_of_one_large_batch():
    config = tiny_pretraining_config()
    audio = torch.randn(8, 4000, generator=torch.Generator().manual_seed(0))
    keys = [(0, 0, i) for i in range(8)]
    large, large_stats = one_update([pretraining_batch(audio, keys, config)], config)
    micro = [pretraining_batch(audio[i : i + 2], keys[i : i + 2], config) for i in range(0, 8, 2)]
    accumulated, accumulated_stats = one_update(micro, config)
    assert accumulated_stats.masked_frames == large_stats.masked_frames
    assert accumulated_stats.contrastive_loss == pytest.approx(large_stats.contrastive_loss, rel=1e-5)
    # (The diversity term's value uses each micro-batch's codebook perplexity, as in fairseq, so the total loss
    # differs slightly; in eval mode its gradient is zero, so the updates must still match.)
    for (name, a), b in zip(large.named_parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # The micro-batches mask different numbers of frames, so normalising each one by its own count (what the
    # widely copied example effectively does) would give a different update: the comparison above can fail.
    counts = [int(b["mask_time_indices"].sum()) for b in micro]
    assert len(set(counts)) > 1


def test_two_processes_give_the_update_of_one_process_with_twice_the_batch(tmp_path, tiny_config_file):
    helper = str(REPO / "tests" / "ddp_update_helper.py")
    env = script_env(ACCELERATE_USE_CPU="true")
    single = subprocess.run([sys.executable, helper, str(tiny_config_file), str(tmp_path / "one.safetensors"),
                             "--batch_size", "4"], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    double = subprocess.run(torchrun + [helper, str(tiny_config_file), str(tmp_path / "two.safetensors"),
                                        "--batch_size", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-5, atol=1e-6, msg=name)
    initial = Wav2Vec2ForPreTraining(tiny_pretraining_config())
    assert not torch.equal(one["project_q.weight"], initial.state_dict()["project_q.weight"])


def test_non_finite_updates_are_skipped_then_stop_the_run():
    config = tiny_pretraining_config()
    audio = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))
    batch = pretraining_batch(audio, [(0, 0, 0), (0, 0, 1)], config)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = Wav2Vec2ForPreTraining(config).eval()
    with torch.no_grad():
        model.project_hid.weight[0, 0] = math.nan
    before = model.quantizer.weight_proj.weight.clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stats = pretraining_update(accelerator, model, optimizer, [batch], max_grad_norm=25.0)
    assert stats.skipped
    assert torch.equal(model.quantizer.weight_proj.weight, before)
    guard = NonFiniteGuard(max_consecutive=2)
    guard.update(True, step=5)
    guard.update(False, step=5)
    guard.update(True, step=6)
    with pytest.raises(TrainingDiverged, match="2 consecutive updates"):
        guard.update(True, step=6)
    assert guard.total == 3


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path, mini_root, tiny_config_file):
    common = ["--musicnet_dir", str(mini_root / "musicnet"), "--config_name", str(tiny_config_file), *BASE_ARGS,
              "--gradient_accumulation_steps", "2", "--max_train_steps", "40", "--checkpointing_steps", "5",
              "--logging_steps", "1", "--checkpoints_total_limit", "2"]
    straight = run_script(common + ["--output_dir", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr
    assert list((tmp_path / "straight" / "logs" / "pretraining").glob("events.out.tfevents.*"))  # tensorboard default

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(SCRIPT), *common, "--output_dir", str(killed_dir)],
                               env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (killed_dir / "checkpoints" / "step_00000010" / "trainer_state.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed_dir / "config.json").exists()

    resumed = run_script(common + ["--output_dir", str(killed_dir), "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    expected, got = read_metrics(tmp_path / "straight"), read_metrics(killed_dir)
    assert [m["step"] for m in got] == list(range(1, 41))
    assert {m["epoch"] for m in got} == {0, 1}  # 36 updates per epoch: the run crosses an epoch boundary
    for a, b in zip(expected, got):
        assert {k: a[k] for k in COMPARED_METRICS} == {k: b[k] for k in COMPARED_METRICS}, a["step"]
    final_a = load_file(tmp_path / "straight" / "model.safetensors")
    final_b = load_file(killed_dir / "model.safetensors")
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert [p.name for p in list_checkpoints(killed_dir)] == ["step_00000035", "step_00000040"]


def test_diverging_run_stops_with_a_clear_message(tmp_path, mini_root):
    poisoned = Wav2Vec2ForPreTraining(tiny_pretraining_config())
    with torch.no_grad():
        poisoned.project_hid.weight.fill_(math.nan)
    poisoned.save_pretrained(tmp_path / "poisoned")
    result = run_script(["--musicnet_dir", str(mini_root / "musicnet"), "--init_from", str(tmp_path / "poisoned"),
                         *BASE_ARGS, "--max_train_steps", "5", "--max_consecutive_skips", "3", "--report_to", "none",
                         "--output_dir", str(tmp_path / "out")])
    assert result.returncode != 0
    assert "3 consecutive updates had a non-finite loss or gradient norm" in result.stderr
    assert not (tmp_path / "out" / "config.json").exists()


def test_pretraining_pushes_a_loadable_model_to_the_hub(tmp_path, mini_root, tiny_config_file):
    from .hub_server import LoopbackHub

    hub = LoopbackHub(tmp_path / "hub").start()
    try:
        env = script_env(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf_home"),
                         HF_TOKEN="hf_loopback", HF_HUB_DISABLE_TELEMETRY="1")
        result = run_script(["--musicnet_dir", str(mini_root / "musicnet"), "--config_name", str(tiny_config_file),
                             *BASE_ARGS, "--max_train_steps", "3", "--checkpointing_steps", "2", "--report_to", "none",
                             "--output_dir", str(tmp_path / "out"), "--push_to_hub", "--hub_model_id", "me/w2v-music"],
                            env=env)
        assert result.returncode == 0, result.stderr
        received = hub.repo_dir("me/w2v-music")
        assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
            p.name for p in received.iterdir()}
        assert not (received / "checkpoints").exists()
        assert "music" in hub.card_metadata["tags"] and hub.card_metadata["datasets"] == ["musicnet"]
        card = (received / "README.md").read_text()
        assert "| updates | 3 |" in card and "hf-music-w2v pretrain --musicnet_dir" in card
        load = ("from transformers import Wav2Vec2ForPreTraining; import sys; "
                "m = Wav2Vec2ForPreTraining.from_pretrained('me/w2v-music'); "
                "print(sum(p.numel() for p in m.parameters()))")
        loaded = subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, text=True, timeout=120)
        assert loaded.returncode == 0, loaded.stderr
        local = Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "out")
        assert int(loaded.stdout.split()[-1]) == sum(p.numel() for p in local.parameters())
        assert any(path.endswith("/resolve/" + hub.revision("me/w2v-music") + "/model.safetensors")
                   for method, path in hub.requests if method == "GET")
    finally:
        hub.stop()


@pytest.mark.slow
def test_accelerate_launch_two_process_streaming_run_with_layerdrop(tmp_path, mini_root):
    config = tmp_path / "layerdrop.json"
    tiny_pretraining_config(layerdrop=0.5).to_json_file(config)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(REPO / "training" / "accelerate_configs" / "cpu_2proc.yaml")]
    result = run_script(["--musicnet_dir", str(mini_root / "musicnet"), "--config_name", str(config), *BASE_ARGS,
                         "--streaming", "--max_train_steps", "4", "--checkpointing_steps", "2", "--logging_steps", "1",
                         "--report_to", "none", "--output_dir", str(tmp_path / "out")],
                        env=script_env(ACCELERATE_USE_CPU="true"), launcher=launcher)
    assert result.returncode == 0, result.stderr
    assert "pretraining on 2 process(es)" in result.stdout
    checkpoint = list_checkpoints(tmp_path / "out")[-1]
    assert sorted(p.name for p in checkpoint.iterdir()) == ["manifest.json", "model.safetensors", "optimizer.pt",
                                                            "trainer_state.json"]  # no pickles: nothing can run
    assert [m["step"] for m in read_metrics(tmp_path / "out")] == [1, 2, 3, 4]


@pytest.mark.parametrize("script", ["pretrain.py", "finetune.py"])
def test_a_multi_process_launch_that_accelerate_does_not_join_is_refused(tmp_path, script):
    # Without ACCELERATE_USE_CPU on a machine without GPUs, accelerate leaves each torchrun process alone; each
    # would then train on everything and overwrite the same output folder.
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine accelerate joins the processes")
    env = {k: v for k, v in script_env().items() if k != "ACCELERATE_USE_CPU"}
    data = ["--musicnet_dir", str(tmp_path)] if script == "pretrain.py" else \
        ["--nsynth_dir", str(tmp_path), "--model_name_or_path", "preset:wav2vec2-base"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "training" / script), *data, "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "the launcher started 2 processes but accelerate set up a job of 1" in result.stderr
    assert "ACCELERATE_USE_CPU=true" in result.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()
