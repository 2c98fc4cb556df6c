"""Each checkpoint layout loads into the causal Wan transformer; bad checkpoints say why not."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file
from tiny_wan import tiny_transformer

from stream_r1_fast.models import CausalWanTransformer, preset
from stream_r1_fast.models.loading import CheckpointError, load_transformer, read_state_dict

# diffusers name -> original Wan name, written out independently of the loader's table.
_TOP = {
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "proj_out": "head.head",
}
_BLOCK = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o", "attn1.norm_q": "self_attn.norm_q", "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o", "attn2.norm_q": "cross_attn.norm_q", "attn2.norm_k": "cross_attn.norm_k",
    "norm2": "norm3", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}


def to_original(sd: dict) -> dict:
    out = {}
    for key, value in sd.items():
        if key == "scale_shift_table":
            out["head.modulation"] = value
            continue
        if key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            if rest == "scale_shift_table":
                out[f"blocks.{i}.modulation"] = value
                continue
            module, param = rest.rsplit(".", 1)
            out[f"blocks.{i}.{_BLOCK[module]}.{param}"] = value
            continue
        module, param = key.rsplit(".", 1)
        out[f"{_TOP.get(module, module)}.{param}"] = value
    return out


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


@pytest.fixture(scope="module")
def model():
    return tiny_transformer(seed=5)


def test_diffusers_folder(tmp_path, model):
    model.save_pretrained(tmp_path / "ours")
    _same_weights(CausalWanTransformer.from_pretrained(tmp_path / "ours"), model)
    _same_weights(load_transformer(tmp_path / "ours"), model)
    # A folder written by diffusers itself, and a model folder with a transformer/ subfolder.
    ref = WanTransformer3DModel(**preset("tiny"))
    ref.load_state_dict(model.state_dict())
    ref.save_pretrained(tmp_path / "pipe" / "transformer")
    _same_weights(CausalWanTransformer.from_pretrained(tmp_path / "pipe", subfolder="transformer"), model)
    _same_weights(load_transformer(tmp_path / "pipe"), model)


def test_sharded_diffusers_folder(tmp_path, model):
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    _same_weights(load_transformer(tmp_path), model)


def test_original_wan_layout(tmp_path, model):
    original = to_original(model.state_dict())
    assert "blocks.0.self_attn.q.weight" in original and "head.head.weight" in original
    save_file({k: v.contiguous() for k, v in original.items()}, tmp_path / "wan.safetensors")
    torch.save(original, tmp_path / "wan.pth")
    _same_weights(load_transformer(tmp_path / "wan.safetensors", "tiny"), model)
    _same_weights(load_transformer(tmp_path / "wan.pth", "tiny"), model)


def test_self_forcing_checkpoint(tmp_path, model):
    other = tiny_transformer(seed=6)
    wrap = lambda m, prefix: {prefix + k: v for k, v in to_original(m.state_dict()).items()}  # noqa: E731
    ckpt = {
        "generator": wrap(model, "model."),
        "generator_ema": wrap(other, "model._fsdp_wrapped_module."),
        "critic": {"model.blocks.0.self_attn.q.weight": torch.zeros(1)},
        "step": torch.tensor(600),
    }
    torch.save(ckpt, tmp_path / "reward_forcing.pt")
    _same_weights(load_transformer(tmp_path / "reward_forcing.pt", "tiny"), other)  # EMA by default
    _same_weights(load_transformer(tmp_path / "reward_forcing.pt", "tiny", which="generator"), model)
    # No config given: read off the shapes (the head dim is not in them).
    inferred = load_transformer(tmp_path / "reward_forcing.pt", attention_head_dim=64)
    for key in ("num_layers", "num_attention_heads", "ffn_dim", "in_channels", "text_dim", "freq_dim", "patch_size"):
        assert inferred.config[key] == model.config[key], key
    _same_weights(inferred, other)
    torch.save({"generator": wrap(model, "model.")}, tmp_path / "self_forcing.pt")
    _same_weights(load_transformer(tmp_path / "self_forcing.pt", "tiny"), model)
    with pytest.raises(CheckpointError, match="no 'generator_ema' entry"):
        read_state_dict(tmp_path / "self_forcing.pt", which="generator_ema")


def test_loaded_model_computes_the_same(tmp_path, model):
    torch.save({"generator_ema": {"model." + k: v for k, v in to_original(model.state_dict()).items()}}, tmp_path / "c.pt")
    loaded = load_transformer(tmp_path / "c.pt", "tiny")
    x, ctx = torch.randn(1, 4, 2, 4, 4), torch.randn(1, 3, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 300.0, ctx).sample, model(x, 300.0, ctx).sample)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_transformer(tmp_path / "nope.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        load_transformer(tmp_path / "empty", "tiny")
    (tmp_path / "weights.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        load_transformer(tmp_path / "weights.onnx")


def test_mismatched_config_names_the_keys(tmp_path, model):
    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\):\n    blocks\.2\."):
        load_transformer(tmp_path, preset("tiny", num_layers=3))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(\d+\):\n    blocks\.1\."):
        load_transformer(tmp_path, preset("tiny", num_layers=1))
    with pytest.raises(CheckpointError, match=r"(?s)shape mismatches.*ffn\.net\.0\.proj\.bias: checkpoint \(256,\) vs model \(128,\)"):
        load_transformer(tmp_path, preset("tiny", ffn_dim=128))
    with pytest.raises(CheckpointError, match="is the config the right model size"):
        load_transformer(tmp_path, preset("tiny", num_attention_heads=4))


class NotATensor:
    pass


def test_unsafe_or_foreign_pickles_are_refused(tmp_path):
    torch.save({"generator": {"x": NotATensor()}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_transformer(tmp_path / "evil.pt", "tiny")
    torch.save({"vae.encoder.weight": torch.zeros(2)}, tmp_path / "vae.pt")
    with pytest.raises(CheckpointError, match="cannot tell the checkpoint's layout"):
        load_transformer(tmp_path / "vae.pt", "tiny")


def _tiny_safetensors(tmp_path, model) -> tuple:
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path, path.read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "empty", "huge header", "header not json"])
def test_unreadable_safetensors_name_the_file(tmp_path, model, damage):
    path, data = _tiny_safetensors(tmp_path, model)
    header = (2**62).to_bytes(8, "little") if damage == "huge header" else (12).to_bytes(8, "little")
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "huge header": header + data[8:],
                      "header not json": header + b"not json{}!" + data[20:]}[damage])
    for target in (path, tmp_path):  # the file itself, and a folder holding it
        with pytest.raises(CheckpointError, match=rf"cannot read {path} as safetensors"):
            load_transformer(target, "tiny")


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_or_bool_weights_name_the_dtype_and_key(tmp_path, model, dtype):
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    key = "blocks.0.ffn.net.0.proj.weight"
    sd[key] = sd[key].to(dtype)
    save_file(sd, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=rf"(?s)dtype mismatches \(1\):\n    {re.escape(key)}: checkpoint {dtype}"):
        load_transformer(tmp_path / "w.safetensors", "tiny")
