"""What the quantizer's discrete codes say about pitch and instrument (the paper's codebook analysis).

Every 20 ms frame of a note gets a code id from the Gumbel quantizer (its hard choice in each codebook group,
combined into one id), and the frame is labelled with its note's pitch and instrument family. The normalised
mutual information (NMI) between code ids and labels is 0 when the codes ignore the label and 1 when each code
belongs to exactly one label and each label has its own codes. NMI grows with the number of distinct codes
even for unrelated labels, so the same figure with the notes' labels shuffled is reported beside it.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Wav2Vec2ForPreTraining

from .audio import fixed_length, normalize_audio

HOP_SAMPLES = 320  # wav2vec2's conv encoder advances 20 ms per frame at 16 kHz


def entropy(counts: np.ndarray) -> float:
    """Entropy in nats of a distribution given by counts."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """NMI of two labelings of the same items: I(a; b) / mean(H(a), H(b)) (the arithmetic normalisation)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"two 1-d labelings of equal length are needed, got shapes {a.shape} and {b.shape}")
    _, a_ids = np.unique(a, return_inverse=True)
    _, b_ids = np.unique(b, return_inverse=True)
    joint = np.zeros((a_ids.max() + 1, b_ids.max() + 1))
    np.add.at(joint, (a_ids, b_ids), 1)
    h_a, h_b = entropy(joint.sum(1)), entropy(joint.sum(0))
    if h_a == 0.0 or h_b == 0.0:
        return 1.0 if h_a == h_b else 0.0  # one side is constant: it tells nothing, unless both are
    mutual = h_a + h_b - entropy(joint.ravel())
    return float(np.clip(mutual / ((h_a + h_b) / 2), 0.0, 1.0))


@torch.no_grad()
def quantizer_code_ids(model: Wav2Vec2ForPreTraining, input_values: torch.Tensor) -> torch.Tensor:
    """`[batch, frame]` code ids: each group's hard choice, combined as g0 * V^(G-1) + ... + g_last.

    The quantizer reads the feature encoder's normalised output (`extract_features`) as in pretraining; in eval
    mode its choice is the argmax of its logits, which `weight_proj` computes (no public method returns the ids).
    """
    model.eval()
    extract_features = model.wav2vec2(input_values).extract_features
    quantizer = model.quantizer
    groups, per_group = quantizer.num_groups, quantizer.num_vars
    logits = quantizer.weight_proj(extract_features)
    choices = logits.view(*logits.shape[:2], groups, per_group).argmax(-1)
    place = per_group ** torch.arange(groups - 1, -1, -1, device=choices.device)
    return (choices * place).sum(-1)


def sounding_frames(audio: np.ndarray, num_frames: int, dynamic_range_db: float = 40.0) -> np.ndarray:
    """`[frame]` mask of frames whose RMS is within `dynamic_range_db` of the note's loudest frame.

    NSynth notes end in release and silence, whose frames all look alike whatever the note was.
    """
    blocks = np.zeros(num_frames)
    usable = min(num_frames, len(audio) // HOP_SAMPLES)
    frames = audio[: usable * HOP_SAMPLES].reshape(usable, HOP_SAMPLES)
    blocks[:usable] = np.sqrt((frames.astype(np.float64) ** 2).mean(1))
    peak = blocks.max()
    if peak == 0.0:
        return np.zeros(num_frames, dtype=bool)
    return blocks >= peak * 10 ** (-dynamic_range_db / 20)


@dataclass
class CodebookAnalysis:
    """Frame-level code ids and labels of a set of notes, and their NMI scores."""

    codes: np.ndarray  # [frame] combined code ids of the sounding frames
    pitch: np.ndarray  # [frame] the MIDI pitch of each frame's note
    family: np.ndarray  # [frame] the instrument family of each frame's note
    note: np.ndarray  # [frame] index of each frame's note
    codebook_size: int

    def scores(self, seed: int = 0) -> dict[str, float]:
        """NMI with pitch and family, the same with labels shuffled between notes, and codebook usage."""
        rng = np.random.default_rng(seed)
        notes = self.note.max() + 1
        shuffled = rng.permutation(notes)
        pitch_of_note = np.zeros(notes, dtype=self.pitch.dtype)
        family_of_note = np.zeros(notes, dtype=self.family.dtype)
        pitch_of_note[self.note], family_of_note[self.note] = self.pitch, self.family
        used = np.unique(self.codes).size
        return {
            "pitch_nmi": normalized_mutual_information(self.codes, self.pitch),
            "family_nmi": normalized_mutual_information(self.codes, self.family),
            "pitch_nmi_shuffled": normalized_mutual_information(self.codes, pitch_of_note[shuffled][self.note]),
            "family_nmi_shuffled": normalized_mutual_information(self.codes, family_of_note[shuffled][self.note]),
            "codes_used": used,
            "codebook_size": self.codebook_size,
            "code_perplexity": float(np.exp(entropy(np.bincount(self.codes)))),
            "frames": int(self.codes.size),
            "notes": int(np.unique(self.note).size),
        }


def analyse_codebook(model: Wav2Vec2ForPreTraining, notes: Iterable[dict], batch_size: int = 16,
                     device: str | torch.device = "cpu") -> CodebookAnalysis:
    """Code ids of the sounding frames of `notes` (rows with 16 kHz `audio`, `pitch`, `instrument_family`)."""
    model = model.to(device).eval()
    codes, pitch, family, note_index = [], [], [], []
    batch: list[dict] = []

    def flush(first_index: int) -> None:
        audio = np.stack([fixed_length(row["audio"]["array"]) for row in batch])
        ids = quantizer_code_ids(model, normalize_audio(torch.from_numpy(audio)).to(device)).cpu().numpy()
        for offset, (row, row_ids) in enumerate(zip(batch, ids)):
            keep = sounding_frames(audio[offset], ids.shape[1])
            codes.append(row_ids[keep])
            pitch.append(np.full(keep.sum(), row["pitch"]))
            family.append(np.full(keep.sum(), row["instrument_family"]))
            note_index.append(np.full(keep.sum(), first_index + offset))

    for index, row in enumerate(notes):
        batch.append(row)
        if len(batch) == batch_size:
            flush(index + 1 - batch_size)
            batch = []
    if batch:
        flush(index + 1 - len(batch))
    if not codes:
        raise ValueError("no notes to analyse")
    quantizer = model.quantizer
    return CodebookAnalysis(np.concatenate(codes), np.concatenate(pitch), np.concatenate(family),
                            np.concatenate(note_index), quantizer.num_vars ** quantizer.num_groups)
