"""CLIP model, checkpoint loader (OpenAI/open_clip names), tokenizers, contrastive loss and ONNX export;
training on a dataset's own items (tiny datasets from tests/models/clip/tiny_dataset.py) and catalog embedding.
Image loading: tests/models/clip/test_images.py."""

import gzip

import numpy as np
import pytest
import torch

from models.clip.model import CLIP, CLIPConfig, ClipEmbedder, build_from_state_dict, config_from_state_dict, load_checkpoint, save_model_dir
from serving.clip.text import BPETokenizer, WordTokenizer, bytes_to_unicode, image_pixels
from models.clip.train import contrastive_loss

torch.set_num_threads(1)

# Widths are multiples of 64 so heads are inferable (width // 64), as for OpenAI checkpoints.
TINY = dict(embed_dim=16, image_resolution=14, vision_layers=2, vision_width=64, vision_patch_size=7,
            vision_heads=1, vision_mlp_width=96, context_length=8, vocab_size=40, text_width=64, text_heads=1,
            text_layers=2, text_mlp_width=128)


def _model(seed=0, **kw) -> CLIP:
    torch.manual_seed(seed)
    m = CLIP(CLIPConfig(**{**TINY, **kw})).eval()
    with torch.no_grad():  # random biases and norms too, so a loader that drops any tensor is caught
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _inputs(seed=0, b=3):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(b, 3, 14, 14, generator=g)
    ids = torch.zeros(b, 8, dtype=torch.long)
    for i, n in enumerate([3, 8, 5][:b]):
        ids[i, :n - 1] = torch.randint(1, 38, (n - 1,), generator=g)
        ids[i, n - 1] = 39  # EOT: largest id
    return img, ids


OPENAI_NAMES = ["visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
                "visual.ln_pre.weight", "visual.transformer.resblocks.1.attn.in_proj_weight",
                "visual.transformer.resblocks.1.attn.in_proj_bias",
                "visual.transformer.resblocks.1.attn.out_proj.weight",
                "visual.transformer.resblocks.0.ln_1.bias", "visual.transformer.resblocks.0.mlp.c_fc.weight",
                "visual.transformer.resblocks.0.mlp.c_proj.bias", "visual.transformer.resblocks.0.ln_2.weight",
                "visual.ln_post.bias", "visual.proj", "token_embedding.weight", "positional_embedding",
                "transformer.resblocks.1.attn.in_proj_weight", "transformer.resblocks.1.mlp.c_fc.bias",
                "ln_final.weight", "text_projection", "logit_scale"]


def test_parameter_names_and_shapes_follow_openai():
    sd = _model().state_dict()
    for name in OPENAI_NAMES:
        assert name in sd, name
    assert sd["visual.conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["visual.positional_embedding"].shape == (5, 64)  # (14/7)^2 + class token
    assert sd["visual.transformer.resblocks.0.attn.in_proj_weight"].shape == (192, 64)
    assert sd["text_projection"].shape == (64, 16) and sd["visual.proj"].shape == (64, 16)
    assert sd["logit_scale"].shape == ()


def test_infer_config_from_shapes():
    m = _model()
    cfg = config_from_state_dict(m.state_dict())
    for k, v in TINY.items():
        assert getattr(cfg, k) == v, k


@pytest.mark.parametrize("fmt", ["plain", "wrapped", "safetensors"])
def test_checkpoint_roundtrip_outputs_equal(tmp_path, fmt):
    m = _model(seed=1)
    sd = m.state_dict()
    if fmt == "plain":
        path = tmp_path / "ckpt.pt"
        torch.save({**sd, "input_resolution": torch.tensor(14), "context_length": torch.tensor(8),
                    "vocab_size": torch.tensor(40)}, path)  # OpenAI's metadata entries
    elif fmt == "wrapped":  # open_clip training checkpoint: DDP prefixes inside "state_dict"
        path = tmp_path / "epoch_1.pt"
        torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    else:
        safetensors = pytest.importorskip("safetensors.torch")
        path = tmp_path / "model.safetensors"
        safetensors.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    loaded = load_checkpoint(path)
    img, ids = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(img), m.encode_image(img))
        assert torch.equal(loaded.encode_text(ids), m.encode_text(ids))
        assert torch.equal(loaded(img, ids)[0], m(img, ids)[0])


def test_gelu_flag_matters_and_loads():
    m = _model(seed=2, quick_gelu=False)
    img, _ = _inputs()
    quick = build_from_state_dict(m.state_dict())  # default: QuickGELU, as OpenAI's
    exact = build_from_state_dict(m.state_dict(), quick_gelu=False)
    with torch.no_grad():
        assert torch.equal(exact.encode_image(img), m.encode_image(img))
        assert not torch.allclose(quick.encode_image(img), m.encode_image(img))


def test_loader_errors_are_clear(tmp_path):
    sd = _model().state_dict()
    with pytest.raises(ValueError, match="visual.proj"):
        build_from_state_dict({k: v for k, v in sd.items() if k != "visual.proj"})
    with pytest.raises(ValueError, match="unexpected"):
        build_from_state_dict({**sd, "visual.attn_pool.query": torch.zeros(2)})
    with pytest.raises(ValueError, match="missing"):
        build_from_state_dict({k: v for k, v in sd.items() if not k.endswith("ln_2.bias")})
    bad = dict(sd)
    bad["ln_final.bias"] = torch.zeros(32)
    with pytest.raises(ValueError, match="ln_final.bias"):
        build_from_state_dict(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pt")


def test_embeddings_normalised_and_text_is_causal_eot_pooled():
    m = _model()
    img, ids = _inputs()
    with torch.no_grad():
        e_i, e_t = m.encode_image(img), m.encode_text(ids)
        torch.testing.assert_close(e_i.norm(dim=-1), torch.ones(3))
        torch.testing.assert_close(e_t.norm(dim=-1), torch.ones(3))
        # Tokens after EOT cannot reach it through the causal mask; tokens before it do.
        after = ids.clone()
        after[0, 5:] = 7
        assert torch.equal(m.encode_text(after)[0], e_t[0])
        before = ids.clone()
        before[0, 1] = (before[0, 1] % 37) + 1
        assert not torch.allclose(m.encode_text(before)[0], e_t[0])
        # Cutting trailing padding gives the same embedding.
        torch.testing.assert_close(m.encode_text(ids[:, :5][[0, 2]]), e_t[[0, 2]])
    with pytest.raises(ValueError, match="context_length"):
        m.encode_text(torch.ones(1, 9, dtype=torch.long))


def test_contrastive_loss():
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    assert contrastive_loss(logits, None) < 1e-3
    assert contrastive_loss(logits.flip(1), None) > 5
    labels = torch.tensor([0, 0, 1])
    # With class positives, the two class-0 pairs should score alike: the diagonal alone is no longer optimal.
    tied = torch.tensor([[10.0, 10.0, 0.0], [10.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    assert contrastive_loss(tied, labels) < contrastive_loss(logits, labels)


def test_word_tokenizer(tmp_path):
    tok = WordTokenizer.build(["brand001 slim tops t-shirt $12.50", "a photo of a sneaker"], context_length=8)
    ids = tok(["slim sneaker", "unseen words here"])
    assert ids.shape == (2, 8) and ids.dtype == np.int64
    assert ids[0, 0] == tok.sot_id and ids[0, 3] == tok.eot_id and ids[0, 4:].sum() == 0
    assert ids[1, 1] == tok.unk_id
    assert tok.eot_id == tok.vocab_size - 1 and (ids.argmax(1) == [3, 4]).all()  # argmax pooling finds EOT
    long = tok(["a " * 20])[0]
    assert long[-1] == tok.eot_id  # truncated, EOT kept
    tok.save(tmp_path / "vocab.json")
    again = WordTokenizer.load(tmp_path / "vocab.json")
    assert again.itos == tok.itos and np.array_equal(again(["slim sneaker"]), ids[:1])
    assert tok.split("Brand012 T-Shirt $9.5") == ["brand", "0", "1", "2", "t", "-", "shirt", "$", "9", ".", "5"]


def test_bpe_tokenizer_on_tiny_merges_file(tmp_path):
    merges = ["#version: 0.2", "l o", "lo w</w>", "e r</w>", "n e", "ne w", "new er</w>", "lo w"]
    path = tmp_path / "merges.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(merges) + "\n")
    tok = BPETokenizer.from_file(path, context_length=10)
    assert tok.vocab_size == 512 + 7 + 2 and tok.eot_id == tok.vocab_size - 1
    assert tok.bpe("low") == "low</w>"
    assert tok.bpe("lower") == "low er</w>"  # 'lo w' (rank 6) then 'e r</w>'; 'lo w</w>' needs w at word end
    assert tok.bpe("newer") == "newer</w>"
    assert tok.bpe("xyz") == "x y z</w>"
    ids = tok(["Low newer!"])[0]
    expected = [tok.sot_id, tok.encoder["low</w>"], tok.encoder["newer</w>"], tok.encoder["!</w>"], tok.eot_id]
    assert list(ids[:5]) == expected and ids[5:].sum() == 0
    assert tok.decode(ids[:5]) == "low newer !"
    assert len(bytes_to_unicode()) == 256 and len(set(bytes_to_unicode().values())) == 256
    bad = tmp_path / "bad.txt"
    bad.write_text("#version: 0.2\na b c\n")
    with pytest.raises(ValueError, match="line 1"):
        BPETokenizer.from_file(bad)


def test_image_pixels():
    g = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    px = image_pixels(g, 28)
    assert px.shape == (2, 3, 28, 28) and px.dtype == np.float32
    assert np.array_equal(px[:, 0], px[:, 2]) and np.isclose(px.max(), g.max() / 255)
    padded = image_pixels(g, 32)
    assert padded.shape == (2, 3, 32, 32) and padded[:, :, :2].sum() == 0
    np.testing.assert_array_equal(padded[:, :, 2:30, 2:30], px)
    with pytest.raises(ValueError, match="resolution"):
        image_pixels(g, 16)
    with pytest.raises(ValueError, match="shape"):
        image_pixels(np.zeros((2, 3, 28, 28), np.uint8), 28)


def test_model_dir_embedder_and_onnx_parity(tmp_path):
    from exporters.clip_export import PARITY_TOLERANCE, export_clip
    from serving.clip.embedder import OnnxClipEmbedder
    tok = WordTokenizer.build(["slim tops t-shirt", "soft bags bag"], context_length=8)
    m = _model(seed=3, vocab_size=tok.vocab_size, image_resolution=28, vision_patch_size=7)
    save_model_dir(m, tok, tmp_path / "clip")
    emb = ClipEmbedder.load(tmp_path / "clip")
    images = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    texts = ["slim t-shirt", "soft bag", "tops", "bag bag bag"]
    e_img, e_txt = emb.embed_images(images), emb.embed_texts(texts)
    assert e_img.shape == (4, 16) and np.allclose(np.linalg.norm(e_txt, axis=1), 1, atol=1e-5)
    both = emb.embed_creatives(images, texts)
    assert np.allclose(np.linalg.norm(both, axis=1), 1, atol=1e-5)
    diffs = export_clip(emb.model, tmp_path / "onnx", tmp_path / "clip" / "vocab.json")
    assert max(diffs.values()) <= PARITY_TOLERANCE, diffs
    ort = OnnxClipEmbedder(tmp_path / "onnx")
    np.testing.assert_allclose(ort.embed_images(images), e_img, atol=PARITY_TOLERANCE)
    np.testing.assert_allclose(ort.embed_texts(texts), e_txt, atol=PARITY_TOLERANCE)


# --- training on a dataset's own items ---------------------------------------------------------------------
SMALL = CLIPConfig(embed_dim=32, vision_layers=1, vision_width=64, vision_mlp_width=128, text_width=64,
                   text_layers=1, text_mlp_width=128)


def _tiny(tmp_path, name="ds", **kw):
    from data.build_data import load_build_data
    from tests.models.clip.tiny_dataset import write_tiny
    return load_build_data(write_tiny(tmp_path / name, **kw))


def _train(tmp_path, data, out="run", mcfg=SMALL, **cfg):
    from models.clip.train import TrainConfig, train_on_items
    tcfg = TrainConfig(**{"epochs": 2, "batch_size": 16, "warmup": 2, "threads": 1, **cfg})
    return train_on_items(tmp_path / out, tcfg, data, mcfg=mcfg, log=lambda *_: None)


def _without_timings(m: dict) -> dict:
    return {k: v for k, v in m.items() if "seconds" not in k}


def test_train_on_items_is_deterministic_and_loads(tmp_path):
    """Two runs with one seed write identical weights and metrics; another seed differs; the dir loads."""
    data = _tiny(tmp_path, image_every=2)
    runs = [_train(tmp_path, data, out=f"run{i}") for i in (0, 1)]
    assert _without_timings(runs[0]) == _without_timings(runs[1])
    a, b = (torch.load(tmp_path / f"run{i}" / "clip.pt") for i in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    _train(tmp_path, data, out="seed1", seed=1)
    c = torch.load(tmp_path / "seed1" / "clip.pt")
    assert not torch.equal(a["text_projection"], c["text_projection"])
    m = runs[0]
    assert m["items"] == 48 and m["items_with_image"] == 24 and m["train_items"] + m["validation_items"] == 48
    assert m["image_tower"].startswith("trained on") and len(m["history"]) == m["epochs_run"] <= 2
    for key in ("i2t_recall@1", "i2t_recall@10", "t2i_recall@1", "t2i_recall@10", "title2text_recall@10"):
        assert 0.0 <= m["validation"][key] <= 1.0, key
    emb = ClipEmbedder.load(tmp_path / "run0")
    assert emb.embed_texts(["red shirt"]).shape == (1, 32)


def test_split_is_seeded_disjoint_and_complete():
    from models.clip.train import TrainConfig, split_items
    tr, va = split_items(200, TrainConfig(seed=3))
    assert len(va) == 20 and not set(tr) & set(va) and sorted(set(tr) | set(va)) == list(range(1, 201))
    assert np.array_equal(split_items(200, TrainConfig(seed=3))[1], va)
    assert not np.array_equal(split_items(200, TrainConfig(seed=4))[1], va)
    assert len(split_items(12, TrainConfig())[1]) == 0  # 10 % of 12 rounds to 1 item: no validation
    assert len(split_items(200, TrainConfig(val_fraction=0.0))[1]) == 0


def test_training_learns_the_image_text_pairing(tmp_path):
    """Shapes identify the category: after training, held-out images find their category's texts far above the
    untrained model and chance (4 categories), and the validation loss went down."""
    data = _tiny(tmp_path, n_items=96)
    m = _train(tmp_path, data, epochs=12, batch_size=32, lr=3e-3, patience=12)
    v, u = m["validation"], m["untrained_validation"]
    assert m["validation_items"] == 10 and v["queries_with_image"] == 10
    assert v["i2t_category_recall@1"] >= 0.7 > u["i2t_category_recall@1"], (v, u)
    assert v["t2i_category_recall@1"] >= 0.7, v
    assert min(h["val_loss"] for h in m["history"]) < m["history"][0]["val_loss"]


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    from models.clip.train import ItemSet, TrainConfig, split_items, validation_loss
    data = _tiny(tmp_path, n_items=60)
    m = _train(tmp_path, data, epochs=12, patience=0, lr=2e-2)  # a high rate: the loss soon stops improving
    assert m["stopped_early"] and m["epochs_run"] == m["best_epoch"] + 1 < 12
    emb = ClipEmbedder.load(tmp_path / "run")
    cfg = TrainConfig(**m["train_config"])
    _, val = split_items(data.num_items, cfg)
    loss = validation_loss(emb.model, emb.tokenizer, ItemSet.from_build_data(data, 28), val, cfg)
    assert loss == pytest.approx(m["history"][m["best_epoch"] - 1]["val_loss"], abs=1e-3)


def test_text_only_dataset_trains_the_text_tower_and_says_so(tmp_path):
    from models.clip.model import embed_items
    data = _tiny(tmp_path, n_items=40, image_every=0)
    m = _train(tmp_path, data, epochs=3)
    assert m["items_with_image"] == 0 and m["image_tower"].startswith("untrained: no item has an image")
    assert m["objectives"] == ["caption-text InfoNCE x 1.0"] and m["epochs_run"] >= 1
    assert "i2t_recall@1" not in m["validation"] and m["validation"]["queries_with_image"] == 0
    assert m["history"][-1]["train_text_text"] < m["history"][0]["train_text_text"] + 1.0
    emb = ClipEmbedder.load(tmp_path / "run")
    e = embed_items(emb, data)
    np.testing.assert_allclose(e, emb.embed_texts(data.catalog.texts[1:]), atol=1e-6)
    assert emb.embed_images(np.zeros((2, 28, 28), np.uint8)).shape == (2, 32)  # the tower exists (random)


def test_embed_items_mixes_image_and_text_and_exports(tmp_path):
    """Items with an image: normalised mean of image and text; without: text. The trained dir exports to ONNX
    with the serving I/O and matches torch."""
    from data.images import load_catalog_images, load_images
    from exporters.clip_export import PARITY_TOLERANCE, export_clip
    from models.clip.model import VOCAB_FILE, embed_rows
    from models.clip.train import embed_items  # what the build imports
    from serving.clip.embedder import OnnxClipEmbedder
    data = _tiny(tmp_path, n_items=30, image_every=3, campaigns=True)
    _train(tmp_path, data, mcfg=None, epochs=1)  # the default architecture (what the build exports)
    emb = ClipEmbedder.load(tmp_path / "run")
    images, has = load_catalog_images(data.catalog)
    e = embed_items(emb, data)
    assert e.shape == (30, 64) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(embed_items(emb, data, images=(images, has)), e)
    texts = data.catalog.texts[1:]
    img_rows = np.flatnonzero(has[1:])
    assert len(img_rows) == 10
    np.testing.assert_allclose(e[img_rows], emb.embed_creatives(images[1:][img_rows], [texts[i] for i in img_rows]),
                               atol=1e-6)
    txt_rows = np.flatnonzero(~has[1:])
    np.testing.assert_allclose(e[txt_rows], emb.embed_texts([texts[i] for i in txt_rows]), atol=1e-6)
    cs = data.campaigns  # campaign 1 shows its promoted item's image; campaign 2 has no image
    assert cs.images[0] == data.catalog.images[cs.item[0]] is not None and cs.images[1] is None
    c = embed_rows(emb, *load_images(cs.images), list(cs.text))
    np.testing.assert_allclose(c[0], emb.embed_creatives(images[cs.item[:1]], cs.text[:1])[0], atol=1e-6)
    np.testing.assert_allclose(c[1], emb.embed_texts(cs.text[1:])[0], atol=1e-6)
    diffs = export_clip(emb.model, tmp_path / "onnx", tmp_path / "run" / VOCAB_FILE)
    assert max(diffs.values()) <= PARITY_TOLERANCE, diffs
    ort = OnnxClipEmbedder(tmp_path / "onnx")
    assert ort.manifest["image_resolution"] == 28 and ort.manifest["embed_dim"] == 64
    np.testing.assert_allclose(ort.embed_images(images[1:][img_rows]), emb.embed_images(images[1:][img_rows]),
                               atol=PARITY_TOLERANCE)
    np.testing.assert_allclose(ort.embed_texts(texts), emb.embed_texts(texts), atol=PARITY_TOLERANCE)


def test_vocabulary_and_context_cover_the_dataset(tmp_path):
    """Every item text and campaign copy tokenizes without <unk> and within the context (longer than 32 tokens
    here); max_context_length caps it and the metrics count what gets cut."""
    from models.clip.train import build_tokenizer
    data = _tiny(tmp_path, n_items=20, image_every=4, long_text=True, campaigns=True)
    tok, cut = build_tokenizer(data, 77)
    texts = data.catalog.texts[1:] + list(data.campaigns.text)
    lengths = [len(tok.encode(t)) for t in texts]
    assert max(lengths) > 32 and tok.context_length == max(lengths) and cut == 0
    assert not (tok(texts) == tok.unk_id).any()
    assert tok(["zzqx unknownword"])[0, 1] == tok.unk_id
    tok32, cut32 = build_tokenizer(data, 32)
    assert tok32.context_length == 32 and cut32 == 1
    m = _train(tmp_path, data, epochs=1, max_context_length=32)
    assert m["context_length"] == 32 and m["texts_truncated"] == 1


def test_short_text_datasets_keep_the_minimum_context(tmp_path):
    from models.clip.train import build_tokenizer
    tok, _ = build_tokenizer(_tiny(tmp_path, n_items=8), 77)
    assert tok.context_length == 32


def test_soft_targets_and_duplicates():
    from models.clip.train import soft_targets
    exact = torch.tensor([[True, False, False], [False, True, True], [False, True, True]])
    same = torch.tensor([[True, True, False], [True, True, True], [False, True, True]])
    t = soft_targets(exact, same, 0.0)
    torch.testing.assert_close(t, torch.tensor([[1.0, 0, 0], [0, 0.5, 0.5], [0, 0.5, 0.5]]))
    t = soft_targets(exact, same, 0.5)
    torch.testing.assert_close(t.sum(1), torch.ones(3))
    torch.testing.assert_close(t[0], torch.tensor([0.75, 0.25, 0.0]))


def test_train_refuses_what_is_not_a_dataset(tmp_path):
    from data.simulator import SimConfig
    from models.clip.train import TrainConfig, train, train_on_items
    assert train is train_on_items
    with pytest.raises(TypeError, match="BuildData"):
        train(tmp_path / "x", TrainConfig(), SimConfig())
    for bad in (dict(caption_mix=(0, 0, 0)), dict(caption_mix=(1, 1)), dict(val_fraction=1.0),
                dict(category_weight=1.0), dict(epochs=0)):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
