"""wav2vec 2.0 pretraining on MusicNet: a thin entry point to the package's training program.

    accelerate launch training/pretrain.py --musicnet_dir data/musicnet --output_dir runs/w2v-musicnet

The same program runs from an install as `hf-music-w2v pretrain ...` or `accelerate launch -m
hf_music_w2v.training.pretrain ...`; `--help` lists every option and its default.
"""

import sys

from hf_music_w2v.training.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
