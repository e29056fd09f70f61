"""The `hf-music-w2v` command's entry point.

`hf-music-w2v`, `hf-music-w2v --help` and `--version` are answered here, without importing the package: its
import registers its classes with transformers' Auto classes, which loads torch and takes seconds. Everything
else goes to `hf_music_w2v.cli`, which builds its full parser on `top_level_parser` and `COMMANDS`.
"""

import argparse
import sys

DESCRIPTION = "`hf-music-w2v`: the package's command line."

#: Each command and its one line of `--help`, in the order listed.
COMMANDS = {
    "pretrain": "wav2vec 2.0 pretraining on MusicNet (see `hf-music-w2v pretrain --help`)",
    "finetune": "fine-tuning on NSynth pitch and instrument family (see `... finetune --help`)",
    "demo": "pretrain on music and on speech (3 seeds each), fine-tune and probe every network on NSynth, report",
    "results": "the README's Results section, generated from a demo's results.json",
    "make-mini-datasets": "render miniature NSynth and MusicNet copies in the official layouts from real instrument "
                          "samples, and a miniature speech corpus (eSpeak NG) in LibriSpeech's layout",
    "predict": "pitch and instrument family of audio files with a fine-tuned model",
    "embed": "mean-pooled embeddings of one layer for audio files, to an .npz",
    "probe": "layer-wise linear / MLP / weighted-sum probes of any audio encoder on NSynth pitch and family, or on "
             "MARBLE- and HEAR-format task folders",
    "convert-fairseq": "a fairseq wav2vec 2.0 pretraining checkpoint (e.g. the paper's) as a "
                       "Wav2Vec2ForPreTraining folder, read weights-only without fairseq",
    "export-onnx": "the two-head classifier as one ONNX graph (needs the onnx extra)",
    "push": "upload a finished pretraining or fine-tuning run to the Hub, as --push_to_hub would have",
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("hf_music_w2v")
    except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        from hf_music_w2v import __version__

        return __version__


def top_level_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The parser of `hf-music-w2v` itself and the action its commands are added to."""
    parser = argparse.ArgumentParser(prog="hf-music-w2v", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"hf-music-w2v {version()}")
    return parser, parser.add_subparsers(dest="command", required=True)


def main() -> int:
    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help", "--version"):
        parser, commands = top_level_parser()
        for name, text in COMMANDS.items():
            commands.add_parser(name, help=text)
        parser.parse_args(argv)  # prints the help, the version or the usage error, and exits
    from hf_music_w2v.cli import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
