"""The WebSocket protocol of ``stream-r1 serve``: client messages parsed and checked here.

Client -> server: JSON text messages, each an object with a ``type``::

    {"type": "start", "prompt": str, "seed": int | null, "policy": "ema_sink" | "static_sink" |
     "no_sink" | {"sink": int, "window": int, "alpha": float}, "max_chunks": int (optional)}
    {"type": "switch", "prompt": str}     # from the next chunk boundary on
    {"type": "pause"}  {"type": "resume"}  {"type": "stop"}

Server -> client: JSON text messages ``hello`` (what is served, the prompt grammar and limits),
``queued`` (``position``, ``message``: "busy, N in queue"), ``started`` (``seed``, ``policy``,
``prompt``, ``queued_s``), ``chunk`` (``index``, ``frames``, ``first_frame``, ``prompt``,
``prompt_since``, ``switched``, ``ttff_ms``, ``fps``, ``chunk_ms``), each ``chunk`` followed by
``frames`` binary messages (one PNG or JPEG per frame, in order), ``switch_ok`` (the switch is
queued for the next chunk), ``paused`` / ``resumed``, ``stopped`` (``reason``) and ``error``
(``message``, ``fatal``: whether the stream ended). A refused message gets an ``error`` and
changes nothing; the connection stays open.
"""

from __future__ import annotations

import dataclasses
import json

from stream_r1_fast.cache import CachePolicy

MAX_MESSAGE_BYTES = 4096
TYPES = ("start", "switch", "pause", "resume", "stop")
MAX_SEED = 2**63 - 1


class ProtocolError(ValueError):
    """A client message that is refused; the text is sent back as the ``error`` message."""


@dataclasses.dataclass
class Start:
    prompt: str
    seed: int | None
    policy: CachePolicy
    max_chunks: int | None


@dataclasses.dataclass
class Switch:
    prompt: str


@dataclasses.dataclass
class Control:
    type: str  # pause, resume, stop


def _prompt(msg: dict, max_chars: int) -> str:
    p = msg.get("prompt")
    if not isinstance(p, str):
        raise ProtocolError(f"'{msg['type']}' needs a \"prompt\" string, got {type(p).__name__}")
    p = " ".join(p.split())
    if not p:
        raise ProtocolError("the prompt is empty")
    if len(p) > max_chars:
        raise ProtocolError(f"the prompt has {len(p)} characters, more than the limit of {max_chars}")
    return p


def _int(v, what: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ProtocolError(f"{what} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _policy(v, presets: dict[str, CachePolicy]) -> CachePolicy:
    if v is None:
        return presets["ema_sink"]
    if isinstance(v, str):
        if v not in presets:
            raise ProtocolError(f"unknown cache policy {v!r}; choose one of {sorted(presets)} or give {{sink, window, alpha}}")
        return presets[v]
    if not isinstance(v, dict) or set(v) - {"sink", "window", "alpha"}:
        raise ProtocolError(f"policy must be a preset name or {{\"sink\": int, \"window\": int, \"alpha\": float}}, got {v!r:.100}")
    sink = _int(v.get("sink", 3), "policy.sink (latent frames)", 0, 64)
    window = _int(v.get("window", 3), "policy.window (latent frames)", 1, 64)
    alpha = v.get("alpha", 0.999)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ProtocolError(f"policy.alpha must be a number in [0, 1], got {alpha!r}")
    return CachePolicy(sink, window, float(alpha))


def parse(text, *, presets: dict[str, CachePolicy], max_prompt_chars: int = 512,
          max_bytes: int = MAX_MESSAGE_BYTES, max_chunks: int | None = None) -> Start | Switch | Control:
    """One client message (the text of a WebSocket text frame) -> a command, or ProtocolError."""
    if not isinstance(text, str):
        raise ProtocolError("binary messages are not accepted: send JSON text messages")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolError(f"message of {size} bytes refused: the limit is {max_bytes} bytes")
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed message (not JSON: {exc})") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"malformed message: expected a JSON object with a \"type\", got {type(msg).__name__}")
    kind = msg.get("type")
    if kind not in TYPES:
        raise ProtocolError(f"unknown message type {kind!r}; expected one of {list(TYPES)}")
    allowed = {"start": {"type", "prompt", "seed", "policy", "max_chunks"}, "switch": {"type", "prompt"}}.get(kind, {"type"})
    extra = set(msg) - allowed
    if extra:
        raise ProtocolError(f"'{kind}' does not take {sorted(extra)}; it takes {sorted(allowed - {'type'})}")
    if kind == "start":
        seed = msg.get("seed")
        if seed is not None:
            seed = _int(seed, "seed", 0, MAX_SEED)
        limit = msg.get("max_chunks")
        if limit is not None:
            limit = _int(limit, "max_chunks", 1, max_chunks or 10**9)
        else:
            limit = max_chunks
        return Start(_prompt(msg, max_prompt_chars), seed, _policy(msg.get("policy"), presets), limit)
    if kind == "switch":
        return Switch(_prompt(msg, max_prompt_chars))
    return Control(kind)
