"""The memory check's estimate (`hf_music_w2v/training/memory.py`) against the peak memory of real pretraining updates.

    .venv/bin/python benchmarks/memory_estimate.py

Each case runs in a fresh process: the model, AdamW and accelerate as a run sets them up, then two pretraining
updates on random audio. Measured is the peak resident memory (ru_maxrss) minus the resident memory just before
the first update, which is what the check compares with MemAvailable; estimate is what the check would count
(everything but the weights, already built on a CPU). README "Memory" records the figures.
"""

import json
import subprocess
import sys

CASES = [("wav2vec2-small", 8, 4.0), ("wav2vec2-base", 2, 4.0), ("wav2vec2-base", 2, 10.0)]

CHILD = r"""
import json, resource, sys, torch
from accelerate import Accelerator
from transformers import Wav2Vec2ForPreTraining
from hf_music_w2v.allocator import keep_freed_memory
from hf_music_w2v.presets import preset_config
from hf_music_w2v.training.memory import enable_gradient_checkpointing, estimate_training_memory
from hf_music_w2v.training.pretrain import pretraining_batch, pretraining_update

name, batch, seconds, checkpointing = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
keep_freed_memory()
config = preset_config(name, layerdrop=0.0)
torch.manual_seed(0)
model = Wav2Vec2ForPreTraining(config)
if checkpointing:
    enable_gradient_checkpointing(model)
samples = int(16_000 * seconds)
inputs = pretraining_batch(torch.randn(batch, samples), [(0, i) for i in range(batch)], config)
estimate = estimate_training_memory(model, batch, samples, pretraining=True, gradient_checkpointing=checkpointing)
accelerator = Accelerator(cpu=True)
model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True))
model.train()
before = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))
for _ in range(2):
    pretraining_update(accelerator, model, optimizer, [inputs], 25.0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT", json.dumps({"estimate": estimate.total - estimate.weights, "measured": peak - before}))
"""


def main() -> None:
    print(f"{'case':<36} {'estimate':>9} {'measured':>9} {'ratio':>6}")
    for name, batch, seconds in CASES:
        for checkpointing in (False, True):
            output = subprocess.run([sys.executable, "-c", CHILD, name, str(batch), str(seconds),
                                     str(int(checkpointing))], capture_output=True, text=True, check=True).stdout
            result = json.loads(output.split("RESULT", 1)[1])
            case = f"{name} {batch} x {seconds:g} s{' checkpointed' if checkpointing else ''}"
            print(f"{case:<36} {result['estimate'] / 1e9:8.2f}G {result['measured'] / 1e9:8.2f}G "
                  f"{result['estimate'] / result['measured']:6.2f}")


if __name__ == "__main__":
    main()
