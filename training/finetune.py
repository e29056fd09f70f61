"""Fine-tuning on NSynth pitch and instrument family: a thin entry point to the package's training program.

    accelerate launch training/finetune.py --model_name_or_path runs/w2v-musicnet --nsynth_dir data/nsynth \
        --output_dir runs/w2v-nsynth

The same program runs from an install as `hf-music-w2v finetune ...` or `accelerate launch -m
hf_music_w2v.training.finetune ...`; `--help` lists every option and its default.
"""

import sys

from hf_music_w2v.training.finetune import main

if __name__ == "__main__":
    sys.exit(main())
