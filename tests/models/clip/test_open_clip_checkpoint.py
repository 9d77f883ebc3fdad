"""A checkpoint that the real open_clip package writes loads into models.clip.model with identical outputs.

open_clip's model module needs torchvision, which does not import beside this project's CPU torch 2.13 (PyPI's
torchvision is built against CUDA torch). So this test runs in a side environment that has both:
`bash scripts/open_clip_parity.sh` (a venv with torch 2.14.1 + torchvision 0.29.1 + open_clip_torch 3.3.0, ~5.6 GB,
from the wheels on these machines' disk) and is skipped in the main one, saying so."""

from __future__ import annotations

import pytest

open_clip = pytest.importorskip(
    "open_clip.model", reason="open_clip's model needs torchvision, which this environment lacks; run "
                              "`bash scripts/open_clip_parity.sh` for this test")
import open_clip as open_clip_package  # noqa: E402  (after the skip: the package import needs torchvision)
import torch  # noqa: E402

from models.clip.model import OPENAI_MEAN, OPENAI_STD, load_checkpoint  # noqa: E402

# Small ViTs of open_clip's own classes (QuickGELU as OpenAI's, GELU as most open_clip models), and a registry
# architecture at full size, randomly initialised (pretrained=None: nothing is downloaded).
SMALL = dict(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=128, layers=2, head_width=64),
             text_cfg=dict(context_length=16, vocab_size=300, width=128, heads=2, layers=2))


def _open_clip_model(case: str):
    torch.manual_seed(0)
    if case == "ViT-B-32":
        return open_clip_package.create_model("ViT-B-32", pretrained=None).eval()
    model = open_clip.CLIP(**SMALL, quick_gelu=case == "quickgelu").eval()
    with torch.no_grad():  # random, non-trivial values everywhere (open_clip initialises some to zero or one)
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("wrapped", [False, True], ids=["state_dict", "training_checkpoint"])
@pytest.mark.parametrize("case", ["quickgelu", "gelu", "ViT-B-32"])
def test_open_clip_checkpoint_loads_with_identical_outputs(tmp_path, case, wrapped):
    theirs = _open_clip_model(case)
    sd = theirs.state_dict()
    if wrapped:  # what open_clip's training loop saves: {'epoch', 'name', 'state_dict' with 'module.' (DDP)}
        sd = {"epoch": 3, "name": case, "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    torch.save(sd, tmp_path / "epoch_3.pt")

    ours = load_checkpoint(tmp_path / "epoch_3.pt", quick_gelu=case == "quickgelu")  # heads: width // 64
    size = theirs.visual.image_size[0]
    assert ours.config.image_resolution == size
    assert (ours.config.image_mean, ours.config.image_std) == (OPENAI_MEAN, OPENAI_STD)

    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(3, 3, size, size, generator=generator)
    vocab, context = ours.config.vocab_size, ours.config.context_length
    text = torch.randint(1, vocab - 1, (3, context), generator=generator)
    text[:, 9:] = 0  # padding after an end-of-text token (open_clip pools the argmax id)
    text[:, 8] = vocab - 1
    with torch.no_grad():
        for normalize in (False, True):
            torch.testing.assert_close(ours.encode_image(ours.normalize_pixels(pixels), normalize=normalize),
                                       theirs.encode_image(_openai_normalized(pixels), normalize=normalize),
                                       rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(ours.encode_text(text, normalize=normalize),
                                       theirs.encode_text(text, normalize=normalize), rtol=1e-4, atol=1e-5)
        # The logit scale travels too: the same image-text logits.
        their_image, their_text, scale = theirs(_openai_normalized(pixels), text)[:3]
        torch.testing.assert_close(ours(ours.normalize_pixels(pixels), text)[0], scale * their_image @ their_text.T,
                                   rtol=1e-4, atol=1e-4)


def _openai_normalized(pixels):
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std
