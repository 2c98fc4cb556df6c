"""VideoAlign release loader (stream_r1_fast.rewards.videoalign, release_config, release_weights).

A tiny random Qwen2-VL is fine-tuned the way VideoAlign does it (reward tokens added, the
embeddings resized, a peft LoRA on every LM linear layer with random weights, a changed vision
tower, a 1-row reward head), saved in the RELEASE layout (model_config.json,
checkpoint-N/{adapter_model.safetensors + non_lora_state_dict.pth | model.pth}, tokenizer/,
transformers-4.45 key names) next to a base folder in the old Qwen2-VL layout; the loader's
rewards must equal those of the live (unmerged) peft model, computed here without the loader.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn

peft = pytest.importorskip("peft")

from reward_fixtures import tiny_qwen2vl_config, tiny_tokenizer  # noqa: E402

from stream_r1_fast.rewards import model as rm  # noqa: E402
from stream_r1_fast.rewards import preprocessing as prep  # noqa: E402
from stream_r1_fast.rewards import release_weights as rw  # noqa: E402
from stream_r1_fast.rewards import video_reward as vr  # noqa: E402
from stream_r1_fast.rewards import videoalign as va  # noqa: E402

# Our own wording, shaped like VideoAlign's templates (str.format field "text_prompt").
TEMPLATE = ("\nRate this generated video.\nVisual quality: <|VQ_reward|>\nEND\nMotion quality: <|MQ_reward|>\nEND\n"
            "Textual prompt - {text_prompt}\nText alignment: <|TA_reward|>\nEND\n")
STATS = {"VQ_mean": 0.4, "VQ_std": 2.0, "MQ_mean": -0.3, "MQ_std": 0.5, "TA_mean": 1.1, "TA_std": 1.5}
SMALL = dict(min_pixels=28 * 28, max_pixels=112 * 112)
EXCLUDE = ["lm_head", "rm_head", "embed_tokens", "visual"]  # VideoAlign's lora_namespan_exclude
PROMPTS = ["a red circle moves left", "a blue square"]
STEP = 12


def _old_name(key: str) -> str:
    """transformers 5 -> transformers 4.45 Qwen2-VL names (what VideoAlign's checkpoints hold)."""
    for new, old in (("model.language_model.", "model."), ("model.visual.", "visual.")):
        for pre in ("base_model.model.", ""):
            if key.startswith(pre + new):
                return pre + old + key[len(pre + new):]
    return key


def _model_config(**changes) -> dict:
    cfg = {
        "data_config": {"meta_data": "/data/train.csv", "data_dir": "/data", "meta_data_test": None,
                        "max_frame_pixels": 112 * 112, "num_frames": None, "fps": 2.0, "p_shuffle_frames": 0.0,
                        "p_color_jitter": 0.0, "eval_dim": ["VQ", "MQ", "TA"],
                        "prompt_template_type": "detailed_special", "add_noise": False, "sample_type": "uniform",
                        "use_tied_data": True},
        "training_args": {"output_dir": "/out/videoreward", "learning_rate": 2e-6, "bf16": True,
                          "special_token_lr": 1e-4, "save_full_model": False},
        "model_config": {"model_name_or_path": "Qwen/Qwen2-VL-2B-Instruct", "model_revision": "main",
                         "output_dim": 1, "use_special_tokens": True, "freeze_vision_tower": False,
                         "freeze_llm": False, "tune_merger": True, "torch_dtype": "bfloat16",
                         "trust_remote_code": False, "attn_implementation": None, "load_in_8bit": False,
                         "load_in_4bit": False, "bnb_4bit_quant_type": "nf4", "use_bnb_nested_quant": False,
                         "reward_token": "special", "loss_type": "btt"},
        "peft_lora_config": {"lora_enable": True, "vision_lora": False, "lora_r": 4, "lora_alpha": 8,
                             "lora_dropout": 0.05, "lora_target_modules": None, "lora_namespan_exclude": EXCLUDE,
                             "lora_modules_to_save": None, "lora_task_type": "CAUSAL_LM", "use_rslora": False,
                             "num_lora_modules": -1},
        "inference_config": dict(STATS),
    }
    for path, value in changes.items():
        section, key = path.split(".")
        if value is None:
            cfg[section].pop(key, None)
        else:
            cfg[section][key] = value
    return cfg


def _write_base(root: Path, model, tok) -> None:
    """The base Qwen2-VL folder as the hub's Qwen2-VL-2B-Instruct has it: flat config.json, old keys."""
    from safetensors.torch import save_file

    root.mkdir(parents=True)
    nested = json.loads(model.config.to_json_string())
    flat = {k: v for k, v in nested.items() if k not in ("text_config", "dtype", "transformers_version")}
    text = dict(nested["text_config"])
    rope = text.pop("rope_parameters")
    flat.update({k: v for k, v in text.items() if k not in ("model_type", "layer_types", "dtype")})
    flat.update(model_type="qwen2_vl", architectures=["Qwen2VLForConditionalGeneration"], torch_dtype="float32",
                rope_theta=rope["rope_theta"], rope_scaling={"type": "mrope", "mrope_section": rope["mrope_section"]})
    (root / "config.json").write_text(json.dumps(flat, indent=2))
    save_file({_old_name(k): v.detach().clone().contiguous() for k, v in model.state_dict().items()},
              str(root / "model.safetensors"))
    tok.save_pretrained(str(root))


def _video_align_model(seed: int = 0):
    """(peft model, tokenizer with the reward tokens, base folder writer args): VideoAlign's recipe."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    tok_base = tiny_tokenizer(reward_tokens=False)
    lm = Qwen2VLForConditionalGeneration(tiny_qwen2vl_config(tok_base, tie_word_embeddings=True)).float().eval()
    base_state = {k: v.clone() for k, v in lm.state_dict().items()}
    tok = tiny_tokenizer(reward_tokens=False)
    tok.add_special_tokens({"additional_special_tokens": list(rm.SPECIAL_TOKENS)})
    lm.resize_token_embeddings(len(tok))
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # "trained" non-LoRA weights: vision tower, the new token rows, the head
        for p in lm.model.visual.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        lm.model.language_model.embed_tokens.weight[len(tok_base):] = torch.randn(3, 32, generator=g)
    lm.rm_head = nn.Linear(32, 1, bias=False)
    with torch.no_grad():
        lm.rm_head.weight.copy_(torch.randn(1, 32, generator=g))
    targets = [n for n, m in lm.named_modules()
               if isinstance(m, (nn.Linear, nn.Embedding)) and not any(x in n for x in EXCLUDE)]
    assert targets and all("language_model.layers." in n for n in targets)
    model = get_peft_model(lm, LoraConfig(target_modules=targets, r=4, lora_alpha=8, lora_dropout=0.05,
                                          task_type="CAUSAL_LM", bias="none"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval(), tok, (lm, base_state, tok_base)


def _write_release(root: Path, model, tok, layout: str, tokenizer: bool = True) -> None:
    from peft import get_peft_model_state_dict

    ckpt = root / f"checkpoint-{STEP}"
    ckpt.mkdir(parents=True)
    (root / "checkpoint-3").mkdir()  # an earlier step: the loader must take the highest
    (root / "model_config.json").write_text(json.dumps(_model_config(), indent=4))
    if layout == "full":
        torch.save({_old_name(k): v.detach().clone() for k, v in model.state_dict().items()}, ckpt / "model.pth")
    else:
        from safetensors.torch import save_file

        lora = get_peft_model_state_dict(model, save_embedding_layers=False)
        assert lora and all(".lora_" in k and ".default." not in k for k in lora)
        save_file({_old_name(k): v.contiguous() for k, v in lora.items()}, str(ckpt / "adapter_model.safetensors"))
        non_lora = {_old_name(k): p.detach().clone() for k, p in model.named_parameters()
                    if "lora_" not in k and any(x in k for x in ("visual", "rm_head", "embed_tokens"))}
        torch.save(non_lora, ckpt / "non_lora_state_dict.pth")
        (ckpt / "adapter_config.json").write_text("{}")  # written by peft; the loader does not need it
    if tokenizer:
        tok.save_pretrained(str(ckpt / "tokenizer"))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    model, tok, (lm, base_state, tok_base) = _video_align_model()
    root = tmp_path_factory.mktemp("videoalign")
    with torch.no_grad():  # the base folder holds the weights from before fine-tuning
        from transformers import Qwen2VLForConditionalGeneration

        base = Qwen2VLForConditionalGeneration(tiny_qwen2vl_config(tok_base, tie_word_embeddings=True))
        base.load_state_dict(base_state)
    _write_base(root / "Qwen2-VL-2B-Instruct", base, tok_base)
    _write_release(root / "adapter", model, tok, "adapter")
    _write_release(root / "full", model, tok, "full", tokenizer=False)
    return {"root": root, "base": root / "Qwen2-VL-2B-Instruct", "model": model, "tok": tok}


def _reference(peft_model, tok, video, prompts) -> torch.Tensor:
    """VideoAlign's forward, independently: the live peft model's hidden states through rm_head,
    read at the three reward tokens -> [B, 3]."""
    pixels, grid = prep.preprocess_video(video, source_fps=None, **SMALL)
    n = int(grid[0].prod()) // 4
    video_text = "<|vision_start|>" + "<|video_pad|>" * n + "<|vision_end|>"
    texts = [rm.QWEN2_VL_CHAT_FORMAT.replace("{text}", TEMPLATE.format(text_prompt=p)).replace("{video}", video_text)
             for p in prompts]
    enc = tok(texts, padding="longest", padding_side="right", add_special_tokens=False, return_tensors="pt")
    ids = enc["input_ids"]
    mm = torch.where(ids == tok.convert_tokens_to_ids("<|video_pad|>"), 2, 0).to(torch.int32)
    lm = peft_model.base_model.model
    with torch.no_grad():
        hidden = lm.model(input_ids=ids, attention_mask=enc["attention_mask"], mm_token_type_ids=mm,
                          pixel_values_videos=pixels, video_grid_thw=grid, use_cache=False).last_hidden_state
        scores = lm.rm_head(hidden)[..., 0]  # [B, L]
    rows = torch.arange(len(prompts))
    return torch.stack([scores[rows, (ids == tok.convert_tokens_to_ids(t)).int().argmax(1)]
                        for t in rm.SPECIAL_TOKENS], 1)


def _video(seed=0):
    return torch.rand(2, 4, 3, 56, 84, generator=torch.Generator().manual_seed(seed))


def _fake_videoalign_templates(path: Path, marker: Path) -> Path:
    """A stand-in for VideoAlign's prompt_template.py; running it would create ``marker``."""
    path.write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n\n"
                    f"DETAILED_PROMPT = {TEMPLATE.replace('<|', '[').replace('|>', ']')!r}\n"
                    f"DETAILED_PROMPT_WITH_SPECIAL_TOKEN = {TEMPLATE!r}\n\n"
                    "def build_prompt(prompt, dimension, template_type):\n    raise SystemExit\n")
    return path


# ---- loading == the live peft model ------------------------------------------------------------


@pytest.mark.parametrize("layout", ["adapter", "full"])
def test_release_rewards_equal_the_peft_model(release, layout, tmp_path):
    marker = tmp_path / "executed"
    templates = _fake_videoalign_templates(tmp_path / "prompt_template.py", marker)
    loaded = va.load_videoalign_release(release["root"] / layout, base_model=release["base"],
                                        prompt_template_file=templates, source_fps=None, min_pixels=28 * 28)
    assert not marker.exists()  # the template file was parsed, not run
    video = _video()
    ref = _reference(release["model"], release["tok"], video, PROMPTS)
    out = loaded.rewards(video, PROMPTS)
    torch.testing.assert_close(out.raw, ref, rtol=1e-4, atol=1e-4)
    mean = torch.tensor([STATS["VQ_mean"], STATS["MQ_mean"], STATS["TA_mean"]])
    std = torch.tensor([STATS["VQ_std"], STATS["MQ_std"], STATS["TA_std"]])
    torch.testing.assert_close(out.normalized, (ref - mean) / std, rtol=1e-4, atol=1e-4)
    # the merge matters: without the LoRA the rewards are far off
    with release["model"].disable_adapter():
        no_lora = _reference(release["model"], release["tok"], video, PROMPTS)
    assert (no_lora - ref).abs().max() > 0.05
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    cfg = loaded.config
    assert cfg.prompt_template == TEMPLATE.format(text_prompt="{caption}")
    assert cfg.fps == 2.0 and cfg.max_pixels == 112 * 112 and cfg.num_frames is None
    assert cfg.mean == (0.4, -0.3, 1.1) and cfg.std == (2.0, 0.5, 1.5)
    assert loaded.special_token_ids == release["tok"].convert_tokens_to_ids(list(rm.SPECIAL_TOKENS))


def test_convert_once_then_from_pretrained(release, tmp_path):
    video = _video(1)
    loaded = va.convert_videoalign_release(release["root"] / "adapter", tmp_path / "merged", release["base"],
                                           dtype="fp32", prompt_template=TEMPLATE, source_fps=None,
                                           min_pixels=28 * 28)
    again = rm.VideoRewardModel.from_pretrained(tmp_path / "merged")
    assert again.config == loaded.config
    torch.testing.assert_close(again.rewards(video, PROMPTS).raw, loaded.rewards(video, PROMPTS).raw)
    torch.testing.assert_close(again.rewards(video, PROMPTS).raw, _reference(release["model"], release["tok"], video,
                                                                             PROMPTS), rtol=1e-4, atol=1e-4)
    # the command line writes the same (bf16 by default; the template from data_config here)
    src = tmp_path / "release"
    shutil.copytree(release["root"] / "full", src)
    cfg = json.loads((src / "model_config.json").read_text())
    cfg["data_config"]["prompt_template"] = TEMPLATE
    (src / "model_config.json").write_text(json.dumps(cfg))
    va.main([str(src), str(tmp_path / "cli"), "--base-model", str(release["base"]), "--step", str(STEP)])
    from safetensors import safe_open

    with safe_open(str(next((tmp_path / "cli").glob("model*.safetensors"))), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    cli = rm.VideoRewardModel.from_pretrained(tmp_path / "cli", source_fps=None, min_pixels=28 * 28)
    assert cli.config.prompt_template == loaded.config.prompt_template
    torch.testing.assert_close(cli.rewards(video, PROMPTS).raw, loaded.rewards(video, PROMPTS).raw,
                               rtol=0.05, atol=0.1)


def test_loading_from_a_checkpoint_folder_and_bf16(release):
    m = va.load_videoalign_release(release["root"] / "adapter" / f"checkpoint-{STEP}", release["base"],
                                   prompt_template=TEMPLATE, dtype="bf16", source_fps=None, min_pixels=28 * 28)
    assert m.dtype == torch.bfloat16 and m.mean.dtype == torch.float32
    assert torch.isfinite(m.rewards(_video(), PROMPTS).raw).all()


def test_trainer_factory_reads_a_release_folder(release):
    video = _video(2)
    m = vr.load_video_reward(release["root"] / "full", dtype="fp32", device="cpu", base_model=release["base"],
                             prompt_template=TEMPLATE, source_fps=None, min_pixels=28 * 28)
    torch.testing.assert_close(m.rewards(video, PROMPTS).raw, _reference(release["model"], release["tok"], video,
                                                                         PROMPTS), rtol=1e-4, atol=1e-4)


# ---- validation and errors ---------------------------------------------------------------------


def _copy(release, tmp_path, layout="adapter") -> Path:
    dst = tmp_path / layout
    shutil.copytree(release["root"] / layout, dst)
    return dst


def _edit_config(root: Path, **changes) -> None:
    (root / "model_config.json").write_text(json.dumps(_model_config(**changes)))


def _load(root, release, **kw):
    kw.setdefault("prompt_template", TEMPLATE)
    return va.load_videoalign_release(root, kw.pop("base_model", release["base"]), **kw)


def test_missing_files(release, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _load(tmp_path / "nope", release)
    root = _copy(release, tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint-7"):
        _load(root, release, checkpoint_step=7)
    (root / f"checkpoint-{STEP}" / "non_lora_state_dict.pth").unlink()
    with pytest.raises(FileNotFoundError, match="non_lora_state_dict.pth"):
        _load(root, release)
    shutil.rmtree(root / f"checkpoint-{STEP}")
    with pytest.raises(FileNotFoundError, match="neither model.pth"):  # checkpoint-3 is empty
        _load(root, release)
    shutil.rmtree(root / "checkpoint-3")
    with pytest.raises(FileNotFoundError, match="no checkpoint-<step>"):
        _load(root, release)
    (root / "model_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        _load(root, release)


class _Touch:
    """Unpickling this would run Path.touch(marker)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("name", ["non_lora_state_dict.pth", "model.pth"])
def test_a_pickle_with_code_is_refused(release, tmp_path, name):
    root = _copy(release, tmp_path, "adapter" if name != "model.pth" else "full")
    marker = tmp_path / "unpickled"
    torch.save({"base_model.model.rm_head.weight": torch.zeros(1, 32), "x": _Touch(marker)},
               root / f"checkpoint-{STEP}" / name)
    with pytest.raises(ValueError, match=f"{name}.*weights_only"):
        _load(root, release)
    assert not marker.exists()
    torch.save([torch.zeros(3)], root / f"checkpoint-{STEP}" / name)
    with pytest.raises(ValueError, match="dict of name -> tensor"):
        _load(root, release)


def test_base_model_errors(release, tmp_path):
    root = _copy(release, tmp_path)
    with pytest.raises(FileNotFoundError, match="'Qwen/Qwen2-VL-2B-Instruct'.*base_model="):
        _load(root, release, base_model=None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _load(root, release, base_model=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        _load(root, release, base_model=tmp_path / "empty")
    # a local model_name_or_path is used as it is
    _edit_config(root, **{"model_config.model_name_or_path": str(release["base"])})
    assert isinstance(_load(root, release, base_model=None), rm.VideoRewardModel)


@pytest.mark.parametrize("changes, error, match", [
    ({"inference_config.VQ_std": None}, KeyError, r"inference_config lacks \['VQ_std'\]"),
    ({"peft_lora_config.lora_r": "4"}, ValueError, "lora_r must be int"),
    ({"peft_lora_config.lora_r": 8}, ValueError, "rank 4.*lora_r=8"),
    ({"model_config.reward_token": "last"}, ValueError, "reward_token"),
    ({"model_config.use_special_tokens": False}, ValueError, "use_special_tokens"),
    ({"model_config.output_dim": 3}, ValueError, r"rm_head.weight has shape \(1, 32\)"),
    ({"data_config.sample_type": "middle"}, ValueError, "sample_type"),
])
def test_config_errors(release, tmp_path, changes, error, match):
    root = _copy(release, tmp_path)
    _edit_config(root, **changes)
    with pytest.raises(error, match=match):
        _load(root, release)


def test_missing_stats_and_template(release, tmp_path):
    root = _copy(release, tmp_path)
    cfg = _model_config()
    del cfg["inference_config"]
    (root / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(KeyError, match="no inference_config"):
        _load(root, release)
    m = _load(root, release, mean=(0, 0, 0), std=(1, 1, 1))
    assert m.config.mean == (0, 0, 0)
    _edit_config(root)
    with pytest.raises(ValueError, match="prompt_template_type='detailed_special'"):
        _load(root, release, prompt_template=None)
    with pytest.raises(ValueError, match="text_prompt"):
        _load(root, release, prompt_template="no field {dimension_name}")
    with pytest.raises(ValueError, match="in this order"):
        _load(root, release, prompt_template="{caption} <|MQ_reward|> <|VQ_reward|> <|TA_reward|>")
    templates = _fake_videoalign_templates(tmp_path / "prompt_template.py", tmp_path / "marker")
    _edit_config(root, **{"data_config.prompt_template_type": "detailed"})
    with pytest.raises(ValueError, match="'detailed' has no reward tokens"):
        _load(root, release, prompt_template=None, prompt_template_file=templates)


def test_weight_errors(release, tmp_path):
    root = _copy(release, tmp_path)
    path = root / f"checkpoint-{STEP}" / "non_lora_state_dict.pth"
    state = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in state.items() if "rm_head" not in k}, path)
    with pytest.raises(KeyError, match="rm_head.weight"):
        _load(root, release)
    torch.save({**state, "base_model.model.model.layers.0.extra.weight": torch.zeros(2)}, path)
    with pytest.raises(KeyError, match="no counterpart"):
        _load(root, release)
    torch.save({k: v for k, v in state.items() if "embed_tokens" not in k}, path)
    with pytest.raises(KeyError, match="embed_tokens"):
        _load(root, release)
    torch.save(state, path)
    shutil.rmtree(root / f"checkpoint-{STEP}" / "tokenizer")  # -> the base tokenizer + the 3 tokens: same size
    assert isinstance(_load(root, release), rm.VideoRewardModel)


def test_key_mapping():
    assert rw.map_module_name("base_model.model.model.layers.0.self_attn.q_proj") == \
        "language_model.layers.0.self_attn.q_proj"
    assert rw.map_module_name("base_model.model.visual.blocks.0.attn.qkv.weight") == "visual.blocks.0.attn.qkv.weight"
    assert rw.map_module_name("model.language_model.norm.weight") == "language_model.norm.weight"
    assert rw.map_module_name("base_model.model.rm_head.weight") == "rm_head.weight"
    with pytest.raises(KeyError):
        rw.map_module_name("base_model.model.score.weight")
    lora, other = rw.split_state({
        "base_model.model.model.layers.1.mlp.up_proj.lora_A.default.weight": torch.zeros(4, 32),
        "base_model.model.model.layers.1.mlp.up_proj.lora_B.default.weight": torch.zeros(64, 4),
        "base_model.model.model.layers.1.mlp.up_proj.base_layer.weight": torch.zeros(64, 32),
        "base_model.model.rm_head.modules_to_save.default.weight": torch.zeros(1, 32),
        "base_model.model.rm_head.original_module.weight": torch.zeros(1, 32),
    }, Path("x"))
    assert list(lora) == ["language_model.layers.1.mlp.up_proj"] and lora[list(lora)[0]]["A"].shape == (4, 32)
    assert sorted(other) == ["language_model.layers.1.mlp.up_proj.weight", "rm_head.weight"]
