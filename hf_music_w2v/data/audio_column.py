"""`SoundfileAudio`: a `datasets` feature for audio files, decoded by soundfile to mono float32 at one rate.

datasets' own `Audio` feature decodes with torchcodec, which needs FFmpeg's shared libraries, and hands out
decoder objects. This feature stores the same `{"bytes", "path"}` struct and decodes it inside `datasets`' own
feature decoding, so every operation that decodes features (indexing, `.map`, `.filter`, `.iter`,
`.with_format("torch"|"numpy")`, `.to_iterable_dataset()`) yields `{"array": float32 samples, "sampling_rate"}`
and operations that drop or skip the column never read a file.
"""

import io
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from datasets.features.features import register_feature

from ..audio import SAMPLING_RATE, resample
from .validation import DataError, open_audio, read_float32, to_mono


@dataclass
class SoundfileAudio:
    """An audio file column (`{"bytes": ..., "path": ...}`), decoded to mono float32 at `sampling_rate`.

    Args:
        sampling_rate: the rate decoded audio comes out at; files at another rate are resampled.
        decode: with False the column stays `{"bytes", "path"}` (nothing is read).
    """

    sampling_rate: int = SAMPLING_RATE
    decode: bool = True
    id: str | None = field(default=None, repr=False)
    pa_type: ClassVar[Any] = pa.struct({"bytes": pa.binary(), "path": pa.string()})
    _type: str = field(default="SoundfileAudio", init=False, repr=False)

    def __call__(self):
        return self.pa_type

    def encode_example(self, value: str | os.PathLike | bytes | dict) -> dict:
        if isinstance(value, (str, os.PathLike)):
            return {"bytes": None, "path": os.fspath(value)}
        if isinstance(value, bytes):
            return {"bytes": value, "path": None}
        if isinstance(value, dict) and ("bytes" in value or "path" in value):
            return {"bytes": value.get("bytes"), "path": value.get("path")}
        raise ValueError(f"an audio file is a path, bytes or {{'bytes', 'path'}}; got {type(value).__name__}")

    def decode_example(self, value: dict, token_per_repo_id=None) -> dict:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        if source is None:
            raise DataError("<audio column>", "an entry has neither bytes nor a path")
        with open_audio(source, name=value.get("path") or "<audio bytes>") as file:
            array, rate = to_mono(read_float32(file)), file.samplerate  # a mean over one channel cost 20%
        if rate != self.sampling_rate:
            array = resample(array, rate, self.sampling_rate)
        return {"array": np.ascontiguousarray(array, dtype=np.float32), "sampling_rate": self.sampling_rate}

    def cast_storage(self, storage: pa.Array) -> pa.StructArray:
        """Accept the struct (datasets' `Audio` layout, or a plain one) or a column of paths."""
        if pa.types.is_string(storage.type) or pa.types.is_large_string(storage.type):
            paths = storage.cast(pa.string())
            nothing = pa.array([None] * len(storage), type=pa.binary())
            return pa.StructArray.from_arrays([nothing, paths], ["bytes", "path"], mask=storage.is_null())
        if pa.types.is_struct(storage.type):
            names = {storage.type.field(i).name for i in range(storage.type.num_fields)}
            fields = [
                storage.field(name).cast(kind) if name in names else pa.array([None] * len(storage), type=kind)
                for name, kind in (("bytes", pa.binary()), ("path", pa.string()))
            ]
            return pa.StructArray.from_arrays(fields, ["bytes", "path"], mask=storage.is_null())
        raise TypeError(f"cannot hold {storage.type} as audio files: expected paths or a struct of bytes and path")

    def embed_storage(self, storage: pa.StructArray, token_per_repo_id=None, local_files: bool = True,
                      remote_files: bool = True) -> pa.StructArray:
        """Read each local file's bytes into the table (`save_to_disk` and `push_to_hub` call this)."""
        if not local_files:
            return storage
        contents = []
        for entry in storage.to_pylist():
            if entry is None:
                contents.append(None)
            elif entry["bytes"] is None and entry["path"] is not None:
                with open(entry["path"], "rb") as file:
                    contents.append(file.read())
            else:
                contents.append(entry["bytes"])
        paths = [None if entry is None or entry["path"] is None else os.path.basename(entry["path"])
                 for entry in storage.to_pylist()]
        return pa.StructArray.from_arrays(
            [pa.array(contents, type=pa.binary()), pa.array(paths, type=pa.string())], ["bytes", "path"],
            mask=storage.is_null())

    def flatten(self) -> dict:
        from datasets import Value

        return {"bytes": Value("binary"), "path": Value("string")} if not self.decode else self


with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*register_feature.*experimental")  # it is the documented way
    register_feature(SoundfileAudio, "SoundfileAudio")


def audio_entries(dataset, column: str = "audio") -> list[dict]:
    """The column's stored `{"bytes", "path"}` entries, in row order, without reading any audio."""
    return dataset.with_format("arrow")[column].to_pylist()
