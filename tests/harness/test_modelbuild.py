"""Building a model from a loaded state dict: a prebuilt meta skeleton (a pool worker's) gives the same model."""

from __future__ import annotations

import torch

import harness.modelbuild as mb
from tests.conftest import model_spec


def _weights(spec: object, dtype: str) -> dict[str, torch.Tensor]:
    """Seeded real tensors of the architecture's shapes (names the checkpoint would hold)."""
    gen = torch.Generator().manual_seed(0)
    shapes = {t.name: t.shape for t in spec.tensor_specs(dtype)}  # type: ignore[attr-defined]  (tied aliases dropped)
    return {name: torch.randn(tuple(shape), generator=gen) for name, shape in shapes.items()}


def test_a_prebuilt_skeleton_gives_the_same_model_and_stays_untouched() -> None:
    for name in ("tiny-opt", "tiny-llama"):
        spec = model_spec(name)
        weights = _weights(spec, "fp32")
        cpu = torch.device("cpu")
        plain = mb.build_model(spec, "fp32", dict(weights), cpu)
        mb.prebuild(spec, "fp32")
        try:
            skeleton = mb.prebuilt(spec, "fp32")
            assert skeleton is not None
            copied = mb.build_model(spec, "fp32", dict(weights), cpu)
            copied_again = mb.build_model(spec, "fp32", dict(weights), cpu)
            assert all(p.is_meta for p in skeleton.parameters())  # the copy got the tensors, not the skeleton
            assert copied is not copied_again
        finally:
            mb.forget_prebuilt()
        assert mb.first_token(plain, cpu, 8) == mb.first_token(copied, cpu, 8) == mb.first_token(copied_again, cpu, 8)
        for (k, a), (_, b) in zip(plain.state_dict().items(), copied.state_dict().items(), strict=True):
            assert torch.equal(a, b), k
        out_plain, out_copied = plain.get_output_embeddings(), copied.get_output_embeddings()
        tied_plain = out_plain.weight.data_ptr() == plain.get_input_embeddings().weight.data_ptr()
        tied_copied = out_copied.weight.data_ptr() == copied.get_input_embeddings().weight.data_ptr()
        assert tied_plain == tied_copied  # tying survives the copy
