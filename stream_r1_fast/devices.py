"""Devices named by users (``--device``, ``device=``, ``train.device``), checked to exist here."""

from __future__ import annotations


def resolve_device(device, where: str | None = None):
    """``device`` (a name or a torch.device; None: cuda if available, else cpu) -> a
    torch.device that this machine has. A name torch does not know, a device that is not
    here, or a kind the package does not run on is a ValueError whose message starts with
    ``where`` (default ``device='...'``)."""
    import torch

    where = where or f"device={device!r}"
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)) or isinstance(device, bool):
        raise ValueError(f"{where}: expected a device name ('cpu', 'cuda', 'cuda:1') or a torch.device")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"{where}: not a device name ('cpu', 'cuda', 'cuda:1', 'mps')") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{where}: no CUDA device here (torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{where}: there are {torch.cuda.device_count()} CUDA devices (0-based)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{where}: no MPS device here")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{where}: only cpu, cuda[:N] and mps are supported")
    return dev
