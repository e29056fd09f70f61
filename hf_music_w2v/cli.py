"""`hf-music-w2v`: the package's command line.

    hf-music-w2v demo --output_dir demo_output
    hf-music-w2v make-mini-datasets data/mini --seed 0
"""

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoFeatureExtractor, AutoModel
from transformers.utils import logging

from .audio import harmonic_note
from .configuration_music_wav2vec2 import MusicWav2Vec2Config, midi_pitch_name
from .hub import save_pretrained_atomic
from .modeling_music_wav2vec2 import Wav2Vec2ForMusicClassification

logger = logging.get_logger(__name__)

# A wav2vec2 with the base model's conv strides (20 ms frames at 16 kHz) but narrow enough for a laptop CPU.
DEMO_BACKBONE = dict(
    conv_dim=(64,) * 7,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    codevector_dim=32,
    proj_codevector_dim=32,
    num_codevectors_per_group=32,
)


def run_demo(args: argparse.Namespace) -> int:
    output_dir = Path(args.output_dir)
    torch.manual_seed(args.seed)
    model = Wav2Vec2ForMusicClassification(MusicWav2Vec2Config(**DEMO_BACKBONE))
    folder = save_pretrained_atomic(model, output_dir / "model")
    print(f"saved a {sum(p.numel() for p in model.parameters()):,}-parameter model to {folder}")

    reloaded = AutoModel.from_pretrained(folder).eval()
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    note = harmonic_note(args.pitch, seconds=4.0, sampling_rate=extractor.sampling_rate)
    inputs = extractor(note, sampling_rate=extractor.sampling_rate, return_tensors="pt")
    with torch.no_grad():
        output = reloaded(inputs.input_values)
    pitch_probs = output.pitch_logits.softmax(-1)[0]
    family_probs = output.instrument_logits.softmax(-1)[0]
    pitch = int(pitch_probs.argmax())
    family = int(family_probs.argmax())
    config = reloaded.config
    print(f"input: a generated 4 s note at MIDI {args.pitch} ({midi_pitch_name(args.pitch)})")
    print(f"pitch: {config.pitch_id2label[pitch]} (MIDI {pitch}), p={float(pitch_probs[pitch]):.3f}")
    print(f"instrument family: {config.id2label[family]}, p={float(family_probs[family]):.3f}")
    print("(the heads are untrained here, so these predictions are arbitrary until the model is fine-tuned)")
    return 0


def run_make_mini_datasets(args: argparse.Namespace) -> int:
    from .data.mini import make_mini_musicnet, make_mini_nsynth

    out_dir = Path(args.out_dir)
    nsynth = make_mini_nsynth(out_dir / "nsynth", seed=args.seed, notes_per_instrument=args.notes_per_instrument,
                              soundfont=args.soundfont)
    musicnet = make_mini_musicnet(out_dir / "musicnet", seed=args.seed, seconds=args.musicnet_seconds,
                                  soundfont=args.soundfont)
    print(f"mini-NSynth in {out_dir / 'nsynth'}: " + ", ".join(f"{k} {v} notes" for k, v in nsynth.items()))
    print(f"mini-MusicNet in {out_dir / 'musicnet'}: " + ", ".join(f"{k} {v} recordings" for k, v in musicnet.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-music-w2v", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="build, save, reload and run a small model on a generated note")
    demo.add_argument("--output_dir", default="demo_output", help="where the model folder is written")
    demo.add_argument("--pitch", type=int, default=60, help="MIDI pitch of the generated note (default 60, C4)")
    demo.add_argument("--seed", type=int, default=0, help="random seed for the model's initial weights")
    demo.set_defaults(handler=run_demo)

    mini = commands.add_parser(
        "make-mini-datasets",
        help="render miniature NSynth and MusicNet copies in the official layouts from real instrument samples",
    )
    mini.add_argument("out_dir", help="writes OUT_DIR/nsynth/nsynth-{train,valid,test} and OUT_DIR/musicnet")
    mini.add_argument("--seed", type=int, default=0, help="chooses pitches and velocities (default 0)")
    mini.add_argument("--notes_per_instrument", type=int, default=8,
                      help="NSynth notes per instrument, 44 instruments in all (default 8)")
    mini.add_argument("--musicnet_seconds", type=float, default=30.0,
                      help="seconds of each of the 8 scores rendered for MusicNet (default 30)")
    mini.add_argument("--soundfont", default=None, help="a General MIDI .sf2 (default: pretty_midi's TimGM6mb)")
    mini.set_defaults(handler=run_make_mini_datasets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
