"""CLIP model, checkpoint loader (OpenAI/open_clip names), tokenizers, contrastive loss and ONNX export."""

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


def test_fused_head_matches_torch_head():
    """models.clip.model calls kernels.clip_embed.clip_head(features, proj) on CUDA: same signature and result."""
    from models.clip.model import project_normalize
    mod = pytest.importorskip("kernels.clip_embed")
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 64, generator=g), torch.randn(64, 16, generator=g)
    torch.testing.assert_close(mod.clip_head(x, w), project_normalize(x, w), atol=1e-5, rtol=1e-5)


def test_train_smoke_is_deterministic(tmp_path):
    """Two tiny runs of the real training loop on a fake IDX dataset write identical weights and metrics."""
    from data.simulator import SimConfig
    from models.clip.train import TrainConfig, train
    from tests.data.test_fashion_mnist import _fake_dataset
    _fake_dataset(tmp_path, n_train=64, n_test=30)
    tcfg = TrainConfig(steps=2, batch_size=16, warmup=1, eval_images=30, threads=1)
    sim = SimConfig(num_items=300, num_users=20)
    runs = [train(tmp_path / f"run{i}", tcfg, sim, data_root=tmp_path, log=lambda *_: None) for i in (0, 1)]
    assert runs[0]["held_out"] == runs[1]["held_out"]
    a, b = (torch.load(tmp_path / f"run{i}" / "clip.pt") for i in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    emb = ClipEmbedder.load(tmp_path / "run0")
    assert emb.embed_texts(["a photo of a coat"]).shape == (1, emb.dim)


def _small_world():
    from data.simulator import SimConfig, simulate
    sim = SimConfig(num_items=300, num_users=20)
    return sim, simulate(sim)


def test_vocabulary_covers_titles_creatives_and_captions():
    """No <unk> on any title, any campaign creative (data/campaigns.py) or any sampled training caption."""
    from data import creatives
    from data.campaigns import _COPY, build_campaigns
    sim, world = _small_world()
    tok = WordTokenizer.build(creatives.vocabulary_texts(world.catalog, sim))
    cs = build_campaigns(world, impressions=(1, 1, 1))
    # Every ad template x percentage x product phrase of any title, not only the ones the seed drew.
    ads = [t.format(product=title, pct=p) for t in (t for ts in _COPY.values() for t in ts)
           for p in creatives.AD_PERCENTS for title in world.catalog.titles[1:40]]
    caps = creatives.CaptionSampler(world.catalog, sim)(np.arange(1, sim.num_items + 1), np.random.default_rng(0))
    texts = world.catalog.titles[1:] + cs.text + ads + caps
    ids = tok(texts, 64)
    assert not (ids == tok.unk_id).any()
    assert tok(["zzqx unknownword"])[0, 1] == tok.unk_id  # words from nowhere map to <unk>


def test_caption_sampler_mix_and_determinism():
    from data import creatives
    from data.fashion_mnist import CLASS_PROMPT_NAMES
    sim, world = _small_world()
    items = np.arange(1, 201)
    s = creatives.CaptionSampler(world.catalog, sim)
    a, b = s(items, np.random.default_rng(3)), s(items, np.random.default_rng(3))
    assert a == b and len(a) == len(items)
    titles = sum(t == world.catalog.titles[i] for t, i in zip(a, items))
    assert 40 < titles < 120  # p=0.4 of 200
    assert any("a photo of a" in t for t in a) and any("%" in t for t in a)
    only_prompts = creatives.CaptionSampler(world.catalog, sim, (0, 0, 1))(items, np.random.default_rng(0))
    cls = creatives.item_classes(world.catalog, sim)
    # Prompts name the item's own leaf or class noun, never another class's.
    for t, i in zip(only_prompts, items):
        assert CLASS_PROMPT_NAMES[cls[i]] in t or creatives.leaf_name(sim, world.catalog.leaf_category[i]) in t
    with pytest.raises(ValueError, match="mix"):
        creatives.CaptionSampler(world.catalog, sim, (0, 0, 0))
