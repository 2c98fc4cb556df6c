"""The original Wan2.1 folder (as Wan-AI publishes it) loads into the same pipeline as the
diffusers folder: tiny random models are written in both layouts here, the original one through
inverse key maps written in the tests (not the loader's; the transformer's table is
tests/test_model_loading.py's), and both loads are compared."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_model_loading import _BLOCK, _TOP, to_original
from tiny_wan import TEXT_DIM, tiny_tokenizer, tiny_transformer

from stream_r1_fast.inference import StreamingPipeline
from stream_r1_fast.inference.text import load_wan_t5_encoder
from stream_r1_fast.models.loading import (
    CheckpointError,
    find_wan_folder,
    load_transformer,
    load_vae,
    read_transformer_config,
    vae_config_from_original,
)

SIZE = dict(height=16, width=32)  # x8 VAE, patch 2: a 1 x 2 token grid
T5_BUCKETS = 32

# ---------------------------------------------------------------------- tiny models


def layout_transformer(seed: int = 0):
    """The tiny transformer with Wan's 16 latent channels (the VAE's)."""
    return tiny_transformer(seed, in_channels=16, out_channels=16)


def layout_vae(seed: int = 0):
    """A Wan-2.1-shaped VAE (4 levels of 2 residual blocks, temporal x4, spatial x8, 16
    latent channels) at base width 4; RMS-norm gains randomised so that their names matter."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                           temperal_downsample=[False, True, True]).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.add_(0.2 * torch.randn_like(p))
    return vae


def layout_text_encoder(seed: int = 0):
    """A tiny UMT5 encoder as Wan's T5 is configured (relative positions to 128, gated GELU)."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=64, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=T5_BUCKETS, relative_attention_max_distance=128,
                     feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    enc = UMT5EncoderModel(cfg).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "layer_norm" in name:
                p.add_(0.3 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.normal_(0.0, 1.0)
    return enc


# ---------------------------------------------------------------------- inverse key maps
# diffusers / transformers names -> the original Wan names, written from the original modules'
# structure (wan/modules/model.py, vae.py, t5.py): the reverse of what the loader converts. The
# transformer's table and state-dict inverse are test_model_loading's (_TOP, _BLOCK, to_original).
transformer_to_original = to_original


def transformer_module_to_original(module: str) -> str:
    if module.startswith("blocks."):
        _, i, rest = module.split(".", 2)
        return f"blocks.{i}.{_BLOCK[rest]}"
    return _TOP.get(module, module)


_RESNET = {"norm1.gamma": "residual.0.gamma", "conv1.weight": "residual.2.weight", "conv1.bias": "residual.2.bias",
           "norm2.gamma": "residual.3.gamma", "conv2.weight": "residual.6.weight", "conv2.bias": "residual.6.bias",
           "conv_shortcut.weight": "shortcut.weight", "conv_shortcut.bias": "shortcut.bias"}
_HEAD = {"norm_out.gamma": "head.0.gamma", "conv_out.weight": "head.2.weight", "conv_out.bias": "head.2.bias",
         "conv_in.weight": "conv1.weight", "conv_in.bias": "conv1.bias"}


def vae_to_original(sd: dict, res_blocks: int = 2) -> dict:
    """AutoencoderKLWan names -> WanVAE_ names. The original decoder is one flat list per level:
    ``res_blocks + 1`` residual blocks, then the upsampler (so ``res_blocks + 2`` entries)."""
    out = {}
    for key, value in sd.items():
        part, rest = key.split(".", 1)
        if part in ("quant_conv", "post_quant_conv"):
            out[f"{'conv1' if part == 'quant_conv' else 'conv2'}.{rest}"] = value
            continue
        if rest in _HEAD:
            out[f"{part}.{_HEAD[rest]}"] = value
            continue
        sub, rest = rest.split(".", 1)
        if sub == "mid_block":
            kind, i, param = rest.split(".", 2)
            if kind == "resnets":
                out[f"{part}.middle.{2 * int(i)}.{_RESNET[param]}"] = value
            else:  # attentions.0: norm.gamma, to_qkv, proj keep their names
                out[f"{part}.middle.1.{param}"] = value
        elif sub == "down_blocks":  # the encoder's list is flat in both
            i, param = rest.split(".", 1)
            out[f"encoder.downsamples.{i}.{_RESNET.get(param, param)}"] = value
        elif sub == "up_blocks":
            level, kind, j, param = rest.split(".", 3)
            stride = res_blocks + 2
            if kind == "resnets":
                out[f"decoder.upsamples.{stride * int(level) + int(j)}.{_RESNET[param]}"] = value
            else:  # upsamplers.0: resample.1 / time_conv keep their names
                out[f"decoder.upsamples.{stride * int(level) + res_blocks + 1}.{param}"] = value
        else:
            raise AssertionError(f"unmapped VAE key {key}")
    return out


_T5_LAYER = {"layer.0.layer_norm.weight": "norm1.weight", "layer.0.SelfAttention.q.weight": "attn.q.weight",
             "layer.0.SelfAttention.k.weight": "attn.k.weight", "layer.0.SelfAttention.v.weight": "attn.v.weight",
             "layer.0.SelfAttention.o.weight": "attn.o.weight",
             "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
             "layer.1.layer_norm.weight": "norm2.weight", "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
             "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight", "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight"}


def umt5_to_wan_t5(sd: dict) -> dict:
    out = {}
    for key, value in sd.items():
        if key in ("shared.weight", "encoder.embed_tokens.weight"):
            out["token_embedding.weight"] = value
        elif key == "encoder.final_layer_norm.weight":
            out["norm.weight"] = value
        else:
            _, _, i, rest = key.split(".", 3)
            out[f"blocks.{i}.{_T5_LAYER[rest]}"] = value
    return out


def original_config(model) -> dict:
    c = model.config
    return {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": "t2v",
            "dim": c.num_attention_heads * c.attention_head_dim, "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim,
            "in_dim": c.in_channels, "out_dim": c.out_channels, "num_heads": c.num_attention_heads,
            "num_layers": c.num_layers, "eps": c.eps, "text_len": 512, "text_dim": c.text_dim}


def write_original_folder(root: Path, transformer, vae, text_encoder, tokenizer) -> Path:
    """A folder laid out as Wan-AI's Wan2.1-T2V-1.3B, in the original modules' key names."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(original_config(transformer)))
    sd = transformer_to_original(transformer.state_dict())
    save_file({k: v.contiguous() for k, v in sd.items()}, root / "diffusion_pytorch_model.safetensors")
    torch.save(vae_to_original(vae.state_dict()), root / "Wan2.1_VAE.pth")
    torch.save(umt5_to_wan_t5(text_encoder.state_dict()), root / "models_t5_umt5-xxl-enc-bf16.pth")
    tokenizer.save_pretrained(root / "google" / "umt5-xxl")
    return root


def write_diffusers_folder(root: Path, transformer, vae, text_encoder, tokenizer) -> Path:
    transformer.save_pretrained(root / "transformer")
    vae.save_pretrained(root / "vae")
    text_encoder.save_pretrained(root / "text_encoder")
    tokenizer.save_pretrained(root / "tokenizer")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    return root


@pytest.fixture(scope="module")
def parts():
    return layout_transformer(3), layout_vae(3), layout_text_encoder(3), tiny_tokenizer()


@pytest.fixture(scope="module")
def folders(parts, tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return write_original_folder(root / "Wan2.1-T2V-1.3B", *parts), write_diffusers_folder(root / "diffusers", *parts)


def _same(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


# ---------------------------------------------------------------------- tests


def test_folder_layouts_are_told_apart(folders):
    original, diffusers = folders
    a, b = find_wan_folder(original), find_wan_folder(diffusers)
    assert (a.layout, b.layout) == ("original", "diffusers")
    assert a.vae.name == "Wan2.1_VAE.pth" and a.tokenizer == original / "google" / "umt5-xxl"
    assert b.transformer == diffusers / "transformer" and a.transformer == original
    # What a command line can check before loading: the VAE's and the text encoder's sizes.
    for key in ("base_dim", "z_dim", "dim_mult", "temperal_downsample", "num_res_blocks"):
        assert a.vae_config()[key] == b.vae_config()[key], key
    assert a.text_dim() == b.text_dim() == TEXT_DIM


def test_original_config_json(folders, parts):
    cfg = read_transformer_config(folders[0] / "config.json")
    want = parts[0].config
    for key in ("num_layers", "num_attention_heads", "attention_head_dim", "ffn_dim", "in_channels", "out_channels",
                "text_dim", "freq_dim", "eps", "cross_attn_norm", "qk_norm"):
        assert cfg[key] == want[key], key
    assert tuple(cfg["patch_size"]) == tuple(want["patch_size"])


def test_transformer_from_original_folder(folders, parts):
    model = load_transformer(folders[0], read_transformer_config(folders[0] / "config.json"))
    _same(model.state_dict(), parts[0].state_dict())


def test_vae_from_original_pth(folders, parts):
    vae = load_vae(folders[0] / "Wan2.1_VAE.pth")
    _same(vae.state_dict(), parts[1].state_dict())
    for key in ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample", "latents_mean", "latents_std"):
        assert list(vae.config[key]) == list(parts[1].config[key]) if isinstance(vae.config[key], (list, tuple)) \
            else vae.config[key] == parts[1].config[key], key
    z = torch.randn(1, 16, 2, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z).sample, parts[1].decode(z).sample, rtol=0, atol=0)


def _bucket(rel: torch.Tensor, num_buckets: int, max_dist: int) -> torch.Tensor:
    """T5's bidirectional relative-position bucket of ``rel = key - query``."""
    half = num_buckets // 2
    out = (rel > 0).long() * half
    a = rel.abs()
    exact = half // 2
    large = exact + (torch.log(a.float().clamp(min=1) / exact) / math.log(max_dist / exact) * (half - exact)).long()
    return out + torch.where(a < exact, a, large.clamp(max=half - 1))


def wan_t5_reference(sd: dict, ids: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Wan's T5 encoder computed straight from its own key names: pre-norm blocks of unscaled
    attention with a per-block relative-position bias, and fc2(fc1(x) * gelu_tanh(gate(x)))."""
    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    x = sd["token_embedding.weight"][ids]
    b, n = ids.shape
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(layers):
        p = lambda name: sd[f"blocks.{i}.{name}"]  # noqa: E731
        table = p("pos_embedding.embedding.weight")
        heads = table.shape[1]
        h = rms(x, p("norm1.weight"))
        q, k, v = (torch.nn.functional.linear(h, p(f"attn.{t}.weight")).view(b, n, heads, -1) for t in "qkv")
        scores = torch.einsum("bqhc,bkhc->bhqk", q, k) + table[_bucket(rel, table.shape[0], 128)].permute(2, 0, 1)
        scores = scores.masked_fill(mask[:, None, None, :] == 0, torch.finfo(scores.dtype).min)
        o = torch.einsum("bhqk,bkhc->bqhc", scores.softmax(-1), v).reshape(b, n, -1)
        x = x + torch.nn.functional.linear(o, p("attn.o.weight"))
        h = rms(x, p("norm2.weight"))
        gate = torch.nn.functional.gelu(torch.nn.functional.linear(h, p("ffn.gate.0.weight")), approximate="tanh")
        x = x + torch.nn.functional.linear(torch.nn.functional.linear(h, p("ffn.fc1.weight")) * gate, p("ffn.fc2.weight"))
    return rms(x, sd["norm.weight"])


def test_t5_pth_maps_onto_umt5(folders, parts):
    pth = folders[0] / "models_t5_umt5-xxl-enc-bf16.pth"
    enc = load_wan_t5_encoder(pth)
    _same(enc.state_dict(), parts[2].state_dict())
    assert enc.shared.weight is enc.encoder.embed_tokens.weight  # tied, as transformers ties it
    torch.manual_seed(0)
    ids = torch.randint(2, 64, (2, 24))
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, 15:] = 0
    ids[1, 15:] = 0
    sd = torch.load(pth, weights_only=True)
    want = wan_t5_reference(sd, ids, mask)
    with torch.no_grad():
        got = enc(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # A swapped mapping would not pass: exchanging the two feed-forward inputs changes the output.
    swapped = dict(sd)
    swapped["blocks.0.ffn.gate.0.weight"], swapped["blocks.0.ffn.fc1.weight"] = sd["blocks.0.ffn.fc1.weight"], sd["blocks.0.ffn.gate.0.weight"]
    assert (wan_t5_reference(swapped, ids, mask) - want).abs().max() > 1e-3


def test_pipelines_from_both_layouts_generate_the_same(folders):
    pipes = [StreamingPipeline.from_pretrained(f, dtype=torch.float32, device="cpu") for f in folders]
    a, b = pipes
    _same(a.transformer.state_dict(), b.transformer.state_dict())
    _same(a.vae.state_dict(), b.vae.state_dict())
    _same(a.prompt_encoder.text_encoder.state_dict(), b.prompt_encoder.text_encoder.state_dict())
    prompt = "a red circle moves left"
    torch.testing.assert_close(a.prompt_encoder([prompt]), b.prompt_encoder([prompt]), rtol=0, atol=0)
    ca = list(a.stream(prompt, num_chunks=2, seed=5, **SIZE))
    cb = list(b.stream(prompt, num_chunks=2, seed=5, **SIZE))
    for x, y in zip(ca, cb):
        torch.testing.assert_close(x.latents, y.latents, rtol=0, atol=0)
        assert torch.equal(x.frames, y.frames)
    assert ca[0].frames.shape == (1, 9, 16, 32, 3)


def test_missing_parts_are_named(tmp_path, folders, parts):
    root = write_original_folder(tmp_path / "wan", *parts)
    (root / "Wan2.1_VAE.pth").unlink()
    with pytest.raises(FileNotFoundError, match=r"original layout without Wan2\.1_VAE\.pth"):
        StreamingPipeline.from_pretrained(root, dtype=torch.float32, device="cpu")
    (root / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"without diffusion_pytorch_model\*\.safetensors, Wan2\.1_VAE\.pth"):
        find_wan_folder(root)
    (tmp_path / "other").mkdir()
    with pytest.raises(FileNotFoundError, match="neither the diffusers layout .* nor the original one"):
        find_wan_folder(tmp_path / "other")


def test_vae_structures_diffusers_cannot_convert_are_refused(tmp_path):
    from diffusers import AutoencoderKLWan

    small = AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[],
                             temperal_downsample=[True, True])
    with pytest.raises(CheckpointError, match="only Wan 2.1's structure"):
        vae_config_from_original(vae_to_original(small.state_dict(), res_blocks=1))
    four = AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                            temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    torch.save(vae_to_original(four.state_dict()), tmp_path / "vae.pth")
    with pytest.raises(CheckpointError, match="latent statistics are known only"):
        load_vae(tmp_path / "vae.pth")


def test_full_size_structures_convert(tmp_path):
    """The real sizes, on the meta device (no weights): Wan2.1-T2V-1.3B's and 14B's config.json,
    the 1.3B transformer's keys, Wan 2.1's VAE (AutoencoderKLWan's defaults) and UMT5-XXL."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    from transformers import UMT5Config, UMT5EncoderModel

    from stream_r1_fast.inference.text import convert_wan_t5_to_umt5, umt5_config_from_wan_t5
    from stream_r1_fast.models import CausalWanTransformer, preset
    from stream_r1_fast.models.loading import convert_original_to_diffusers

    for name, cfg in (("wan2.1-1.3b", {"dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30}),
                      ("wan2.1-14b", {"dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40})):
        (tmp_path / "config.json").write_text(json.dumps({
            "_class_name": "WanModel", "_diffusers_version": "0.30.0", "eps": 1e-06, "freq_dim": 256, "in_dim": 16,
            "model_type": "t2v", "out_dim": 16, "text_len": 512, **cfg}))
        got = read_transformer_config(tmp_path / "config.json")
        assert {k: tuple(v) if isinstance(v, list) else v for k, v in got.items()} == preset(name), name
    with torch.device("meta"):
        model = CausalWanTransformer(**preset("wan2.1-1.3b"))
        vae = AutoencoderKLWan()
        t5 = UMT5EncoderModel(UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                         num_heads=64, relative_attention_num_buckets=32, feed_forward_proj="gated-gelu"))
    sd = model.state_dict()
    assert {k: v.shape for k, v in convert_original_to_diffusers(transformer_to_original(sd)).items()} == \
        {k: v.shape for k, v in sd.items()}
    sd = vae.state_dict()
    original = vae_to_original(sd)
    cfg = vae_config_from_original(original)
    for key, value in cfg.items():
        assert list(vae.config[key]) == list(value) if isinstance(value, list) else vae.config[key] == value, key
    assert {k: v.shape for k, v in convert_wan_vae_to_diffusers(original).items()} == {k: v.shape for k, v in sd.items()}
    sd = t5.state_dict()
    original = umt5_to_wan_t5(sd)
    cfg = umt5_config_from_wan_t5(original)
    for key in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
                "relative_attention_max_distance", "is_gated_act", "dense_act_fn"):
        assert getattr(cfg, key) == getattr(t5.config, key), key
    assert {k: v.shape for k, v in convert_wan_t5_to_umt5(original).items()} == {k: v.shape for k, v in sd.items()}
    # The bytes text-encoder offload keeps off the device (README): 5,680,910,336 parameters.
    assert sum(v.numel() for k, v in original.items()) == 5_680_910_336
