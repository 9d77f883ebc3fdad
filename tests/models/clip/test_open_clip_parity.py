"""The serving BPE tokenizer (serving.clip.text.BPETokenizer) against the real open_clip package: the same ids for
the same texts, read from the BPE file the open_clip wheel ships.

open_clip's package __init__ imports torchvision (open_clip/utils.py), which cannot be installed beside this
project's CPU torch (PyPI's torchvision for torch 2.13 fails to import: 'operator torchvision::nms does not
exist'), so the test loads open_clip's own tokenizer module from the installed wheel by its path: the real code,
without the package import. The checkpoint parity (an open_clip-written checkpoint loading with identical outputs)
needs open_clip.model, hence torchvision: test_open_clip_checkpoint.py, run by `bash scripts/open_clip_parity.sh`
in a side environment."""

from __future__ import annotations

import importlib.util
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from serving.clip.text import BPETokenizer

OPEN_CLIP = Path(sysconfig.get_paths()["purelib"]) / "open_clip"
OPENAI_MERGES = 49152 - 256 - 2  # OpenAI's vocabulary: 256 bytes x 2, these merges, start and end of text

pytestmark = pytest.mark.skipif(not (OPEN_CLIP / "tokenizer.py").exists(),
                                reason="open_clip is not installed: pip install --no-deps open_clip_torch==3.3.0 "
                                       "(scripts/setup.sh does)")

TEXTS = [
    "a red sneaker", "Women's running shoes, size 9!", "café crème brûlée &amp; 2x  espresso", "日本語のテキスト",
    "emoji 🙂 test", "  A   B\tC\n", "I'm you're they'll we've she'd", "12345 678.9", "HELLO World",
    "Ünïcödé ÀÉÎ", "mañana—today…", "tab\tsep", "", "x" * 300, " ".join(["leather boots"] * 60),
]


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer", OPEN_CLIP / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def test_bpe_ids_equal_open_clip_for_the_same_texts(open_clip_tokenizer):
    ours = BPETokenizer.from_file(OPEN_CLIP / "bpe_simple_vocab_16e6.txt.gz", max_merges=OPENAI_MERGES)
    assert ours.vocab_size == 49408 and (ours.sot_id, ours.eot_id) == (49406, 49407)
    theirs = open_clip_tokenizer(TEXTS).numpy()  # context 77, truncated with the end token kept last
    np.testing.assert_array_equal(ours(TEXTS), theirs)
    for text in TEXTS[:12]:
        assert ours.encode(text) == [ours.sot_id, *open_clip_tokenizer.encode(text), ours.eot_id], text
