"""Whole Wan model folders, in diffusers' layout or the original one (:func:`find_wan_folder`):
where their parts are, checked to exist; their configs read without loading weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from stream_r1_fast.files import read_json_object
from stream_r1_fast.models.layouts import read_transformer_config
from stream_r1_fast.models.vae_loading import vae_config_from_original
from stream_r1_fast.models.weight_files import CheckpointError, read_weights_file

ORIGINAL_VAE = "Wan2.1_VAE.pth"
ORIGINAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
ORIGINAL_TOKENIZER = "google/umt5-xxl"


@dataclasses.dataclass(frozen=True)
class WanFolder:
    """Where the parts of a Wan model folder are. ``layout``: ``"diffusers"`` (``transformer/``,
    ``vae/``, ``text_encoder/``, ``tokenizer/``) or ``"original"`` (as Wan-AI publishes
    Wan2.1-T2V-1.3B: ``config.json`` + ``diffusion_pytorch_model*.safetensors``,
    ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth``, ``google/umt5-xxl/``)."""

    root: Path
    layout: str
    transformer: Path  # the folder with the transformer's config.json and weights
    vae: Path  # a diffusers vae/ folder or the original .pth
    text_encoder: Path  # a transformers text_encoder/ folder or the original T5 .pth
    tokenizer: Path

    def transformer_config(self) -> dict:
        return read_transformer_config(self.transformer / "config.json")

    def vae_config(self) -> dict:
        """The VAE's config: ``vae/config.json``, or read off the tensor shapes of the original
        ``.pth`` (memory-mapped: its data is not read)."""
        if self.layout == "diffusers":
            return read_json_object(self.vae / "config.json", CheckpointError)
        try:
            return vae_config_from_original(read_weights_file(self.vae))
        except CheckpointError as exc:
            raise CheckpointError(f"{self.vae}: {exc}") from None

    def text_dim(self) -> int:
        """The text encoder's width (the transformer's ``text_dim`` must match it)."""
        if self.layout == "diffusers":
            data = read_json_object(self.text_encoder / "config.json", CheckpointError)
            try:
                return int(data["d_model"])
            except (ValueError, TypeError, KeyError) as exc:
                raise CheckpointError(f"cannot read d_model from {self.text_encoder / 'config.json'} "
                                      f"({type(exc).__name__}: {exc})") from None
        sd = read_weights_file(self.text_encoder)
        if "token_embedding.weight" not in sd:
            raise CheckpointError(f"{self.text_encoder}: not Wan's T5 encoder (no token_embedding.weight)")
        return int(sd["token_embedding.weight"].shape[1])


def find_wan_folder(path: str | Path, option: str = "path", *, transformer_weights: bool = True) -> WanFolder:
    """The parts of the Wan model folder at ``path`` (either layout), checked to exist; nothing
    is read. Raises FileNotFoundError / NotADirectoryError naming ``option`` and every missing part.
    ``transformer_weights=False``: the transformer's weights may be missing (a checkpoint replaces them)."""
    root = Path(path)
    where = f"{option}={str(path)!r}"
    if not root.exists():
        raise FileNotFoundError(f"{where}: the folder does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{where}: not a folder (expected a Wan model folder)")
    if (root / "transformer").is_dir() or (root / "model_index.json").is_file():
        folder = WanFolder(root, "diffusers", root / "transformer", root / "vae", root / "text_encoder", root / "tokenizer")
        needed = [("transformer/config.json", (folder.transformer / "config.json").is_file()),
                  ("vae/", folder.vae.is_dir()), ("text_encoder/", folder.text_encoder.is_dir()),
                  ("tokenizer/", folder.tokenizer.is_dir())]
        weights = folder.transformer.is_dir() and any(folder.transformer.glob("*.safetensors"))
        needed.append(("transformer/*.safetensors", weights or not transformer_weights))
    elif (root / "config.json").is_file() or (root / ORIGINAL_VAE).is_file() or (root / ORIGINAL_T5).is_file():
        folder = WanFolder(root, "original", root, root / ORIGINAL_VAE, root / ORIGINAL_T5, root / ORIGINAL_TOKENIZER)
        weights = any(root.glob("diffusion_pytorch_model*.safetensors"))
        needed = [("config.json", (root / "config.json").is_file()),
                  ("diffusion_pytorch_model*.safetensors", weights or not transformer_weights),
                  (ORIGINAL_VAE, folder.vae.is_file()), (ORIGINAL_T5, folder.text_encoder.is_file()),
                  (ORIGINAL_TOKENIZER + "/", folder.tokenizer.is_dir())]
    else:
        raise FileNotFoundError(
            f"{where}: not a Wan model folder: neither the diffusers layout (transformer/config.json, vae/, "
            f"text_encoder/, tokenizer/) nor the original one (config.json + diffusion_pytorch_model*.safetensors, "
            f"{ORIGINAL_VAE}, {ORIGINAL_T5}, {ORIGINAL_TOKENIZER}/)"
        )
    missing = [name for name, ok in needed if not ok]
    if missing:
        raise FileNotFoundError(f"{where}: a Wan model folder in the {folder.layout} layout without {', '.join(missing)}")
    return folder


__all__ = ["ORIGINAL_T5", "ORIGINAL_TOKENIZER", "ORIGINAL_VAE", "WanFolder", "find_wan_folder"]
