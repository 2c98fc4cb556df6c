"""StreamingPipeline.from_pretrained as a diffusers user expects it: torch_dtype=, arguments
checked before any weight is read, pipe.to(), text-encoder CPU offload, LoRA adapters
(peft folders and LongLive .pt) merged, and no third-party log noise."""

from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch
from test_wan_layouts import (
    layout_text_encoder,
    layout_transformer,
    layout_vae,
    transformer_module_to_original,
    write_diffusers_folder,
    write_original_folder,
)
from tiny_wan import tiny_tokenizer

from stream_r1_fast.inference import PromptEncoder, StreamingPipeline
from stream_r1_fast.models.loading import CheckpointError

F32 = dict(dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def parts():
    return layout_transformer(7), layout_vae(7), layout_text_encoder(7), tiny_tokenizer()


@pytest.fixture(scope="module")
def folder(parts, tmp_path_factory):
    return write_diffusers_folder(tmp_path_factory.mktemp("pipe") / "diffusers", *parts)


@pytest.fixture(scope="module")
def original(parts, tmp_path_factory):
    return write_original_folder(tmp_path_factory.mktemp("pipe") / "Wan2.1-T2V-1.3B", *parts)


@pytest.fixture
def no_weights_read(monkeypatch):
    """Every weight reader fails the test if called."""
    import safetensors.torch

    import stream_r1_fast.inference.assembly as assembly_mod
    import stream_r1_fast.models.loading as loading_mod

    def forbidden(*a, **k):
        raise AssertionError("weights were read before the arguments were checked")

    monkeypatch.setattr(assembly_mod, "load_transformer", forbidden)
    monkeypatch.setattr(loading_mod, "load_vae", forbidden)
    monkeypatch.setattr(loading_mod, "merge_lora", forbidden)
    monkeypatch.setattr(PromptEncoder, "from_parts", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(safetensors.torch, "load_file", forbidden)


# ---------------------------------------------------------------------- checked before loading


def test_bad_arguments_fail_before_any_weight_is_read(folder, original, tmp_path, no_weights_read):
    f = str(folder)
    bad = [
        (dict(path=tmp_path / "nowhere"), FileNotFoundError, rf"path='{tmp_path / 'nowhere'}': the folder does not exist"),
        (dict(path=folder / "model_index.json"), NotADirectoryError, "path=.*model_index.json': not a folder"),
        (dict(torch_dtype=torch.int64), ValueError, "torch_dtype=torch.int64: not a floating-point torch dtype"),
        (dict(dtype="floaty"), ValueError, "dtype='floaty': not a floating-point"),
        (dict(dtype=torch.float16, torch_dtype=torch.bfloat16), ValueError, "disagree: give one of them"),
        (dict(text_encoder_dtype="int8"), ValueError, "text_encoder_dtype='int8'"),
        (dict(device="gpu7"), ValueError, "device='gpu7': not a device name"),
        (dict(device="cuda:7"), ValueError, "device='cuda:7'"),
        (dict(checkpoint=tmp_path / "rf.pt"), FileNotFoundError, rf"checkpoint='{tmp_path / 'rf.pt'}': no such checkpoint"),
        (dict(checkpoint=folder / "model_index.json"), CheckpointError, "checkpoint=.*unknown checkpoint type"),
        (dict(lora=tmp_path / "lora.pt"), FileNotFoundError, rf"lora='{tmp_path / 'lora.pt'}': no such LoRA"),
        (dict(lora=folder / "vae"), FileNotFoundError, "lora=.*needs adapter_config.json"),
        (dict(lora=folder / "model_index.json"), ValueError, "lora=.*model_index.json': unknown LoRA type"),
        (dict(lora_alpha=-1.0), ValueError, "lora_alpha must be a number > 0"),
        (dict(offload_text_encoder="yes"), TypeError, "offload_text_encoder must be True or False"),
        (dict(which="ema"), ValueError, "which must be"),
        (dict(chunk_frames=0), ValueError, "chunk_frames must be an int >= 1"),
        (dict(num_inference_steps=4), TypeError, "unexpected keyword argument.*num_inference_steps"),
    ]
    if torch.cuda.is_available():
        bad = [b for b in bad if b[0].get("device") != "cuda:7" or torch.cuda.device_count() <= 7]
    for overrides, exc, pattern in bad:
        kwargs = {"path": f, **F32, **overrides}
        if "torch_dtype" in overrides and "dtype" not in overrides:
            del kwargs["dtype"]
        with pytest.raises(exc, match=pattern):
            StreamingPipeline.from_pretrained(kwargs.pop("path"), **kwargs)
    # Both layouts: a missing part is named before anything loads.
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="half': a Wan model folder in the original layout without "
                                                "diffusion_pytorch_model"):
        StreamingPipeline.from_pretrained(tmp_path / "half", **F32)
    # A config that cannot build the model, before its weights are read.
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"dim": 100, "num_heads": 3}')
    for name in ("diffusion_pytorch_model.safetensors", "Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth"):
        (tmp_path / "bad" / name).write_bytes(b"x")
    (tmp_path / "bad" / "google" / "umt5-xxl").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="dim 100 is not a multiple of num_heads 3"):
        StreamingPipeline.from_pretrained(tmp_path / "bad", **F32)


def test_torch_dtype_is_dtype(folder):
    a = StreamingPipeline.from_pretrained(folder, torch_dtype=torch.float32, device="cpu")
    b = StreamingPipeline.from_pretrained(folder, dtype="float32", torch_dtype="torch.float32", device="cpu")
    c = StreamingPipeline.from_pretrained(folder, torch_dtype="bf16", device="cpu")
    assert next(a.transformer.parameters()).dtype == next(b.transformer.parameters()).dtype == torch.float32
    assert next(c.transformer.parameters()).dtype == torch.bfloat16
    assert next(c.prompt_encoder.text_encoder.parameters()).dtype == torch.bfloat16
    assert next(c.vae.parameters()).dtype == torch.float32


def test_pipe_to(folder):
    pipe = StreamingPipeline.from_pretrained(folder, **F32)
    ref = pipe.prompt_encoder(["a red circle"]).clone()
    assert pipe.to(torch.bfloat16) is pipe
    assert next(pipe.transformer.parameters()).dtype == torch.bfloat16
    assert next(pipe.prompt_encoder.text_encoder.parameters()).dtype == torch.bfloat16
    assert next(pipe.vae.parameters()).dtype == torch.float32
    assert pipe.prompt_encoder(["a red circle"]).dtype == torch.bfloat16  # the fp32 cache was dropped
    pipe.to("cpu", dtype=torch.float32)  # back in float32 (the weights keep their bf16 rounding)
    again = pipe.prompt_encoder(["a red circle"])
    assert again.dtype == torch.float32 and (again - ref).abs().max() > 0
    torch.testing.assert_close(again, pipe.prompt_encoder._encode(["a red circle"]), rtol=0, atol=0)
    assert pipe.device == torch.device("cpu")
    with pytest.raises(ValueError, match="device='cuda:9'"):
        pipe.to("cuda:9")
    with pytest.raises(TypeError, match="takes a device and/or a dtype"):
        pipe.to(3)
    with pytest.raises(ValueError, match="not a floating-point torch dtype"):
        pipe.to(dtype=torch.int32)


# ---------------------------------------------------------------------- text-encoder offload


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def test_text_encoder_offload(folder):
    plain = StreamingPipeline.from_pretrained(folder, **F32)
    pipe = StreamingPipeline.from_pretrained(folder, offload_text_encoder=True, **F32)
    enc = pipe.prompt_encoder
    assert enc.offload and enc.device == pipe.device
    assert all(p.device.type == "cpu" for p in enc.text_encoder.parameters())
    # Record where the encoder is sent and where its weights are when it runs.
    moves, seen = [], []
    real_to = enc.text_encoder.to

    def to(*args, **kwargs):
        moves.append(torch.device(args[0] if args else kwargs["device"]))
        return real_to(*args, **kwargs)

    enc.text_encoder.to = to
    hook = enc.text_encoder.register_forward_pre_hook(lambda m, a: seen.append(next(m.parameters()).device))
    prompts = ["a red circle", "a blue square moves"]
    got = enc(prompts)
    assert moves == [pipe.device, torch.device("cpu")] and seen == [pipe.device]
    enc(prompts[:1])  # cached: the encoder does not move
    assert len(moves) == 2
    hook.remove()
    torch.testing.assert_close(got, plain.prompt_encoder(prompts), rtol=0, atol=0)
    # The device memory the offload saves is the encoder's weights (and buffers), counted here:
    # on a CUDA device pipe.device_memory_bytes() shows it (CPU: every part is on the device).
    saved = _param_bytes(enc.text_encoder)
    assert saved == plain.device_memory_bytes()["text_encoder"] > 0
    print(f"\ntext-encoder offload saves {saved} bytes of device memory on the tiny model")
    # Switching it off keeps it on the device; on again sends it back to the CPU.
    pipe.disable_text_encoder_offload()
    assert not enc.offload
    pipe.enable_text_encoder_offload()
    assert enc.offload and all(p.device.type == "cpu" for p in enc.text_encoder.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_text_encoder_offload_saves_device_memory(folder):
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    plain = StreamingPipeline.from_pretrained(folder, dtype=torch.float32, device="cuda")
    with_encoder = torch.cuda.memory_allocated() - base
    del plain
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    pipe = StreamingPipeline.from_pretrained(folder, dtype=torch.float32, device="cuda", offload_text_encoder=True)
    without = torch.cuda.memory_allocated() - base
    saved = _param_bytes(pipe.prompt_encoder.text_encoder)
    assert with_encoder - without >= saved
    assert pipe.device_memory_bytes()["text_encoder"] == 0
    pipe.prompt_encoder(["a red circle"])
    assert torch.cuda.memory_allocated() - base <= without + 4096 * 32  # back on the CPU after encoding


# ---------------------------------------------------------------------- LoRA


def _lora_model(base, rank=4, alpha=8.0, seed=0):
    """A peft LoRA on a copy of ``base`` with random A and B (B is zero after peft's init)."""
    targets = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_out.0",
               "ffn.net.0.proj", "ffn.net.2"]
    model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.2)
    return model


def _by_hand(base, lora_sd: dict, scale: float) -> dict:
    """W + scale * B @ A for every module with LoRA weights (peft's saved key names)."""
    sd = {k: v.clone() for k, v in base.state_dict().items()}
    for key, a in lora_sd.items():
        if key.endswith("lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b = lora_sd[key.replace("lora_A", "lora_B")]
            sd[f"{module}.weight"] += scale * (b @ a)
    return sd


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_peft_adapter_folder_is_merged(folder, parts, tmp_path):
    lora = _lora_model(parts[0])
    lora.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    saved = peft.get_peft_model_state_dict(lora)
    merged_in_memory = copy.deepcopy(lora).merge_and_unload().state_dict()
    pipe = StreamingPipeline.from_pretrained(folder, lora=tmp_path / "adapter", **F32)
    got = pipe.transformer.state_dict()
    _close(got, merged_in_memory)
    _close(got, _by_hand(parts[0], saved, 8.0 / 4))
    assert not any("lora" in k for k in got)  # merged: plain Linear layers again
    assert (got["blocks.0.attn1.to_q.weight"] - parts[0].state_dict()["blocks.0.attn1.to_q.weight"]).abs().max() > 1e-3
    x, ctx = torch.randn(1, 16, 2, 2, 2), torch.randn(1, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(pipe.transformer(x, 500.0, ctx).sample, lora(x, 500.0, ctx).sample,
                                   rtol=1e-4, atol=1e-4)


def test_longlive_lora_pt_is_merged(original, parts, tmp_path):
    """LongLive saves {"generator_lora": get_peft_model_state_dict(generator), "critic_lora": ...}
    with the generator in the original Wan names (blocks.N.self_attn.q...), alpha in its yaml."""
    lora = _lora_model(parts[0], rank=4, alpha=4.0, seed=1)
    saved = peft.get_peft_model_state_dict(lora)
    as_longlive = {}
    for key, value in saved.items():
        module, ab = key.removeprefix("base_model.model.").rsplit(".lora_", 1)
        as_longlive[f"base_model.model.{transformer_module_to_original(module)}.lora_{ab}"] = value
    assert "base_model.model.blocks.0.self_attn.q.lora_A.weight" in as_longlive
    torch.save({"generator_lora": as_longlive, "critic_lora": {"x.lora_A.weight": torch.zeros(1)}}, tmp_path / "lora.pt")
    pipe = StreamingPipeline.from_pretrained(original, lora=tmp_path / "lora.pt", **F32)  # alpha = rank: scale 1
    _close(pipe.transformer.state_dict(), _by_hand(parts[0], saved, 1.0))
    doubled = StreamingPipeline.from_pretrained(original, lora=tmp_path / "lora.pt", lora_alpha=8.0, **F32)
    _close(doubled.transformer.state_dict(), _by_hand(parts[0], saved, 2.0))


def test_lora_that_does_not_fit_is_named(folder, parts, tmp_path):
    other = layout_transformer(1)
    wide = peft.get_peft_model(copy.deepcopy(other), peft.LoraConfig(r=2, target_modules=["attn1.to_q"]))
    sd = {k.replace("blocks.0.", "blocks.9."): v for k, v in peft.get_peft_model_state_dict(wide).items()}
    torch.save({"generator_lora": sd}, tmp_path / "far.pt")
    with pytest.raises(CheckpointError, match=r"lora=.*far.pt' does not fit the transformer \(1\):\n    blocks\.9\.attn1\.to_q: no such module"):
        StreamingPipeline.from_pretrained(folder, lora=tmp_path / "far.pt", **F32)
    torch.save({"generator_lora": {"blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 128)}}, tmp_path / "half.pt")
    with pytest.raises(CheckpointError, match="only one of lora_A / lora_B"):
        StreamingPipeline.from_pretrained(folder, lora=tmp_path / "half.pt", **F32)


# ---------------------------------------------------------------------- log noise


def test_default_load_prints_no_third_party_noise(folder, original, capfd, monkeypatch):
    import diffusers
    import transformers

    monkeypatch.delenv("STREAM_R1_FAST_VERBOSE", raising=False)
    before = (diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity(),
              diffusers.utils.logging.is_progress_bar_enabled(), transformers.utils.logging.is_progress_bar_enabled())
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for f in (folder, original):
            StreamingPipeline.from_pretrained(f, **F32).to(torch.bfloat16)
    out, err = capfd.readouterr()
    assert err == "" and out == "", (out, err)
    assert not [w for w in caught if any(lib in w.filename for lib in ("diffusers", "transformers", "accelerate", "peft"))]
    after = (diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity(),
             diffusers.utils.logging.is_progress_bar_enabled(), transformers.utils.logging.is_progress_bar_enabled())
    assert after == before  # restored
    # STREAM_R1_FAST_VERBOSE=1 keeps the libraries' own output (transformers' loading bar here).
    monkeypatch.setenv("STREAM_R1_FAST_VERBOSE", "1")
    StreamingPipeline.from_pretrained(folder, **F32)
    assert "Loading weights" in capfd.readouterr().err
