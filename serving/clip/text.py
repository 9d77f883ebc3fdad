"""CLIP input pre-processing without torch: text tokenizers and image pixels.

- WordTokenizer: the default model's word-level vocabulary, built by models.clip.train from
  data.creatives.vocabulary_texts (catalog titles, the title lexicon, every campaign ad-copy template and every
  caption prompt), so titles and creatives never hit <unk>; any other word maps to <unk> (id 1). (Real CLIP
  checkpoints need their BPE vocabulary, bpe_simple_vocab_16e6.txt.gz, which cannot be fetched here.)
  Ids: 0 pad, 1 unknown, words..., then <start_of_text>, <end_of_text> as the two LAST ids, so EOT has the
  largest id in every sequence and OpenAI's argmax pooling finds it.
- BPETokenizer: CLIP's byte-level BPE (OpenAI's simple_tokenizer algorithm) reading a user's merges file.
"""

from __future__ import annotations

import gzip
import html
import json
import os
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

try:  # the `regex` module gives CLIP's exact \p{L}/\p{N} classes; `re` approximations otherwise
    import regex as _re_u
    _LETTERS, _NUMBER = r"\p{L}+", r"\p{N}"
    _OTHER = r"[^\s\p{L}\p{N}]+"
except ImportError:  # pragma: no cover - regex ships with the environment
    _re_u = re
    _LETTERS, _NUMBER, _OTHER = r"[^\W\d_]+", r"\d", r"[^\s\w]+|_+"

PAD, UNK, SOT, EOT = "<pad>", "<unk>", "<start_of_text>", "<end_of_text>"
_WORD_PATTERN = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]")  # words, single digits (as CLIP does), punctuation


def _clean(text: str) -> str:
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip().lower()


def _pack(seqs: list[list[int]], context_length: int, eot_id: int, pad_id: int) -> np.ndarray:
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2 (SOT + EOT), got {context_length}")
    out = np.full((len(seqs), context_length), pad_id, np.int64)
    for i, s in enumerate(seqs):
        if len(s) > context_length:  # truncate but keep EOT last, as open_clip does
            s = s[:context_length - 1] + [eot_id]
        out[i, :len(s)] = s
    return out


class WordTokenizer:
    kind = "word"

    def __init__(self, words: list[str], context_length: int = 32):
        if len(set(words)) != len(words):
            raise ValueError("words must be unique")
        self.itos = [PAD, UNK] + [w for w in words if w not in (PAD, UNK, SOT, EOT)] + [SOT, EOT]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.context_length = int(context_length)
        self.pad_id, self.unk_id = 0, 1
        self.sot_id, self.eot_id = len(self.itos) - 2, len(self.itos) - 1

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @staticmethod
    def split(text: str) -> list[str]:
        return _WORD_PATTERN.findall(_clean(text))

    @classmethod
    def build(cls, texts, context_length: int = 32, min_count: int = 1) -> "WordTokenizer":
        counts = Counter(w for t in texts for w in cls.split(t))
        words = sorted(w for w, c in counts.items() if c >= min_count)
        return cls(words, context_length)

    def encode(self, text: str) -> list[int]:
        return [self.sot_id] + [self.stoi.get(w, self.unk_id) for w in self.split(text)] + [self.eot_id]

    def __call__(self, texts, context_length: int | None = None) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        return _pack([self.encode(t) for t in texts], context_length or self.context_length, self.eot_id,
                     self.pad_id)

    def save(self, path: str | os.PathLike) -> None:
        words = self.itos[2:-2]
        Path(path).write_text(json.dumps({"kind": self.kind, "context_length": self.context_length,
                                          "words": words}, indent=0))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WordTokenizer":
        d = json.loads(Path(path).read_text())
        if d.get("kind") != cls.kind:
            raise ValueError(f"{path}: not a word tokenizer file (kind={d.get('kind')!r})")
        return cls(d["words"], d["context_length"])


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 reversible byte -> printable unicode map (whitespace/control bytes shifted past 255)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class BPETokenizer:
    """CLIP's byte-level BPE: words get '</w>' on their last symbol, the lowest-rank merge is applied until none
    applies, vocab = 256 bytes + 256 bytes with '</w>' + one entry per merge + SOT/EOT."""

    kind = "bpe"

    def __init__(self, merges: list[tuple[str, str]], context_length: int = 77):
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.decoder = {i: v for v, i in self.encoder.items()}
        self.bpe_ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.cache: dict[str, str] = {}
        self.context_length = int(context_length)
        self.sot_id, self.eot_id = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        self.pad_id = 0
        self.pat = _re_u.compile(
            r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|" + _LETTERS + "|" + _NUMBER + "|" + _OTHER,
            _re_u.IGNORECASE)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    @classmethod
    def from_file(cls, path: str | os.PathLike, context_length: int = 77,
                  max_merges: int | None = None) -> "BPETokenizer":
        """Read a merges file (plain or .gz): an optional header line holding '#version', then one 'a b' pair per line.
        OpenAI's bpe_simple_vocab_16e6.txt.gz needs max_merges=48894 (49152-256-2) to get its 49408 ids."""
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"BPE merges file not found: {p}")
        raw = gzip.open(p, "rb").read() if p.suffix == ".gz" else p.read_bytes()
        lines = raw.decode("utf-8").split("\n")
        # A header line names the version: '#version: 0.2', or in OpenAI's own file (which open_clip ships)
        # '"bpe_simple_vocab_16e6.txt#version: 0.2'; it is not a merge.
        if lines and "#version" in lines[0]:
            lines = lines[1:]
        merges = []
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{p}: line {n + 1} is not a merge pair: {line!r}")
            merges.append((parts[0], parts[1]))
        if max_merges is not None:
            merges = merges[:max_merges]
        return cls(merges, context_length)

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda pr: self.bpe_ranks.get(pr, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        ids = [self.sot_id]
        for token in self.pat.findall(_clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids + [self.eot_id]

    def decode(self, ids) -> str:
        text = "".join(self.decoder[int(i)] for i in ids if int(i) not in (self.sot_id, self.eot_id))
        raw = bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")
        return raw.replace("</w>", " ").strip()

    def __call__(self, texts, context_length: int | None = None) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        return _pack([self.encode(t) for t in texts], context_length or self.context_length, self.eot_id,
                     self.pad_id)


def load_tokenizer(path: str | os.PathLike, context_length: int | None = None):
    """A saved WordTokenizer (.json) or a CLIP BPE merges file (.txt / .txt.gz)."""
    p = Path(path)
    if p.suffix == ".json":
        tok = WordTokenizer.load(p)
        if context_length:
            tok.context_length = int(context_length)
        return tok
    return BPETokenizer.from_file(p, context_length or 77)


def image_pixels(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 images [N,H,W] (grayscale, replicated to 3 channels as the 3-channel CLIP stem expects) or
    [N,H,W,3] -> float32 [N,3,R,R] in [0,1]; smaller images are zero-padded to the centre (28 -> 32)."""
    a = np.asarray(images)
    if a.ndim == 2:
        a = a[None]
    if a.ndim == 3:
        a = np.repeat(a[:, None], 3, axis=1)
    elif a.ndim == 4 and a.shape[-1] == 3:
        a = a.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"images must be [N,H,W] or [N,H,W,3], got shape {a.shape}")
    h, w = a.shape[-2:]
    if h > resolution or w > resolution:
        raise ValueError(f"images are {h}x{w}, larger than the model's resolution {resolution}; resize first")
    px = a.astype(np.float32) / (255.0 if a.dtype == np.uint8 else 1.0)
    if (h, w) != (resolution, resolution):
        top, left = (resolution - h) // 2, (resolution - w) // 2
        out = np.zeros((len(px), 3, resolution, resolution), np.float32)
        out[:, :, top:top + h, left:left + w] = px
        px = out
    return np.ascontiguousarray(px)
