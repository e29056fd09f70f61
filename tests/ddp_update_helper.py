"""One pretraining update on fixed noise, saved as safetensors; run by test_pretraining.py under torchrun or alone.

    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 tests/ddp_update_helper.py CONFIG OUT --batch_size 2
    python tests/ddp_update_helper.py CONFIG OUT --batch_size 4
"""

import argparse
import os
import sys

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from safetensors.torch import save_file
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

from hf_music_w2v.training.engine import UpdateBatchSampler
from hf_music_w2v.training.pretrain import pretraining_batch, pretraining_update

NUM_WINDOWS, WINDOW_SAMPLES, SEED = 8, 4000, 0

parser = argparse.ArgumentParser()
parser.add_argument("config")
parser.add_argument("out")
parser.add_argument("--batch_size", type=int, required=True)
args = parser.parse_args()

# In eval mode the quantizer's argmax leaves its projection without a gradient: DDP must expect that.
accelerator = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
config = Wav2Vec2Config.from_pretrained(args.config)
windows = torch.randn(NUM_WINDOWS, WINDOW_SAMPLES, generator=torch.Generator().manual_seed(SEED))
sampler = UpdateBatchSampler(NUM_WINDOWS, args.batch_size, SEED, 0, accelerator.num_processes,
                             accelerator.process_index)
indices = next(iter(sampler))
batch = pretraining_batch(windows[indices], [(SEED, 0, i) for i in indices], config)

torch.manual_seed(SEED)
# eval(): dropout and Gumbel noise would draw differently for differently split batches; what is compared is the
# normalisation and the data assignment. SGD with lr 1 makes the update equal to the gradient itself.
model = Wav2Vec2ForPreTraining(config).eval()
optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
model, optimizer = accelerator.prepare(model, optimizer)
stats = pretraining_update(accelerator, model, optimizer, [batch], max_grad_norm=None)
if accelerator.is_main_process:
    weights = {k: v.contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    save_file(weights, args.out, metadata={"loss": repr(stats.loss), "masked_frames": str(stats.masked_frames)})
accelerator.wait_for_everyone()
accelerator.end_training()  # destroys the gloo group
# Even after that, gloo's worker threads can still hold tensors when the interpreter is torn down, which aborts
# the rank ("terminate called without an active exception") in a run that finished; seen about once in 20 CI
# runs. Everything this helper produces is written by now, so it leaves without the teardown.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
