"""The README's quick start for real weights runs as written against tiny random models saved in
the real layouts (a diffusers Wan folder, Wan-AI's original folder, a Self-Forcing-style `.pt`,
a LongLive `lora.pt`).

The code blocks are taken from README.md at test time. Only what cannot exist here is
replaced, each replacement asserted to apply: the `/path/to/...` paths by the tiny files,
`cuda` devices by the CPU, bf16 by fp32 (CPU speed), and — so that a CPU runs it in seconds —
the stream's size (32 x 32 pixels instead of the 480 x 832 default) and its length (2 chunks
instead of 21). Everything else (the calls, arguments, the loop) runs as printed."""

from __future__ import annotations

import re
from pathlib import Path

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

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _block(marker: str) -> str:
    found = [b for b in _python_blocks() if marker in b]
    assert len(found) == 1, f"README has {len(found)} python blocks containing {marker!r}"
    return found[0]


def _substitute(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in code, f"the README block no longer contains {old!r}: update this test"
        code = code.replace(old, new)
    return code


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    parts = layout_transformer(11), layout_vae(11), layout_text_encoder(11), tiny_tokenizer()
    diffusers = write_diffusers_folder(root / "Wan2.1-T2V-1.3B-Diffusers", *parts)
    original = write_original_folder(root / "Wan2.1-T2V-1.3B", *parts)
    student = layout_transformer(12)
    torch.save({"generator": student.state_dict()}, root / "student.pt")
    lora = peft.get_peft_model(layout_transformer(12), peft.LoraConfig(r=2, lora_alpha=2, target_modules=["attn1.to_q"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.1)
    saved = {}
    for key, value in peft.get_peft_model_state_dict(lora).items():
        module, ab = key.removeprefix("base_model.model.").rsplit(".lora_", 1)
        saved[f"base_model.model.{transformer_module_to_original(module)}.lora_{ab}"] = value
    torch.save({"generator_lora": saved}, root / "lora.pt")
    return {"diffusers": diffusers, "original": original, "student": root / "student.pt", "lora": root / "lora.pt",
            "student_weights": student.state_dict()}


def test_streaming_quick_start(files):
    code = _substitute(_block("pipe.stream("), {
        '"/path/to/Wan2.1-T2V-1.3B-Diffusers"': repr(str(files["diffusers"])),
        'checkpoint="/path/to/reward_forcing.pt")': f'checkpoint={str(files["student"])!r}, dtype=torch.float32, device="cpu")',
        "seed=0,": "seed=0, height=32, width=32,",
        "chunk.index == 20": "chunk.index == 1",
    })
    scope = {"torch": torch}
    exec(compile(code, "README.md (streaming quick start)", "exec"), scope)
    pipe, chunk, frames = scope["pipe"], scope["chunk"], scope["frames"]
    assert chunk.index == 1 and frames.dtype == torch.uint8 and tuple(frames.shape) == (1, 12, 32, 32, 3)
    for name, value in files["student_weights"].items():  # the checkpoint replaced the folder's weights
        torch.testing.assert_close(pipe.transformer.state_dict()[name], value, rtol=0, atol=0)


def test_original_folder_lora_offload_quick_start(files):
    code = _substitute(_block("offload_text_encoder=True"), {
        '"/path/to/Wan2.1-T2V-1.3B",': repr(str(files["original"])) + ",",
        '"/path/to/longlive_base.pt"': repr(str(files["student"])),
        '"/path/to/lora.pt"': repr(str(files["lora"])),
        "torch_dtype=torch.bfloat16": "torch_dtype=torch.float32",
        'device="cuda"': 'device="cpu"',
        'pipe.to("cuda:1")': 'pipe.to("cpu")',
    })
    scope = {"torch": torch, "StreamingPipeline": __import__("stream_r1_fast.inference", fromlist=["x"]).StreamingPipeline}
    exec(compile(code, "README.md (original folder quick start)", "exec"), scope)
    pipe = scope["pipe"]
    merged = pipe.transformer.state_dict()["blocks.0.attn1.to_q.weight"]
    assert not torch.equal(merged, files["student_weights"]["blocks.0.attn1.to_q.weight"])  # the LoRA is in
    torch.testing.assert_close(pipe.transformer.state_dict()["blocks.0.attn1.to_k.weight"],
                               files["student_weights"]["blocks.0.attn1.to_k.weight"], rtol=0, atol=0)
    chunk = next(iter(pipe.stream("a red circle", num_chunks=1, height=32, width=32, seed=0)))
    assert chunk.frames.shape[1] == 9
