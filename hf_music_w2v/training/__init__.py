"""The training engine and its two programs.

- `engine`: the one training loop (`train`) and what a program gives it (`TrainingTask`);
- `arguments`: the shared options (`RunArguments`) and recipes;
- `layout`: a run folder's files, results keys and lock; `checkpoints`: trainer state and checkpoints;
- `pretrain`, `finetune`: the programs (`python -m hf_music_w2v.training.pretrain`, or `hf-music-w2v pretrain`);
- `launch`: how the command line and the demo start them under accelerate's launcher.
"""
