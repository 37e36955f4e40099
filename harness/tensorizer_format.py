"""The zoo's writer for tensorizer's format: one ``model.tensors``, tensor by tensor (needs ``coldstart[peers]``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from tqdm import tqdm

from harness.checkpoints import CheckpointWriteError, _Entry, tensor_digest
from harness.synthetic import iter_chunks
from harness.zoo import TensorSpec

TENSORS_FILE = "model.tensors"


def write_tensorizer(specs: tuple[TensorSpec, ...], dst: Path, seed: int, bar: tqdm) -> tuple[list[_Entry], list[str]]:
    """Serialize every tensor with ``TensorSerializer.write_tensor``, one at a time.

    Memory is bounded by the largest tensor (``write_tensor`` writes synchronously), not by the model. The names
    are the plain state-dict keys, so ``TensorDeserializer`` maps them back one to one.
    """
    if importlib.util.find_spec("tensorizer") is None:
        raise CheckpointWriteError("format tensorizer needs the tensorizer package: pip install 'coldstart[peers]'")
    from tensorizer import TensorSerializer
    from tensorizer.serialization import TensorType

    entries: list[_Entry] = []
    with open(dst / TENSORS_FILE, "wb+") as f:  # tensorizer requires a readable, writable, seekable file
        serializer = TensorSerializer(f)
        try:
            for ts in specs:
                t = torch.cat([c.reshape(-1) for c in iter_chunks(ts, seed)]).reshape(ts.shape)
                serializer.write_tensor(0, ts.name, TensorType.STATE_DICT, t)
                entries.append(_Entry(ts, TENSORS_FILE, tensor_digest(t)))
                bar.update(ts.nbytes)
        finally:
            serializer.close()  # writes the header's tensor count and size; closes f (fsynced by the store)
    return entries, [TENSORS_FILE]
