"""``stream-r1 serve``: a live web demo of streaming generation.

A local web page (FastAPI + uvicorn, frames over a WebSocket) where you type a prompt, watch
the video stream chunk by chunk as it is decoded, switch the prompt mid-stream (through
:meth:`stream_r1_fast.inference.StreamingPipeline.open_stream`), pause, resume and stop, with
the cache policy and seed as controls and live figures (time to first frame, sustained frames
per second, chunk index, the prompt of each chunk).

    stream-r1 serve                       # the toy world on the CPU, http://127.0.0.1:8000
    stream-r1 serve --model Wan2.1-T2V-1.3B-Diffusers --checkpoint rf.pt   # Wan on a GPU

Modules: :mod:`.backend` (what is served: the toy world or Wan weights), :mod:`.protocol`
(the WebSocket messages, checked), :mod:`.app` (the FastAPI app's routes), :mod:`.session`
(one connection and its stream), :mod:`.server` (what the sessions share: the bounded worker
pool, the counters), :mod:`.slots` (the stream slots and their queue), :mod:`.cli` (the command). FastAPI and uvicorn are the ``serve``
extra (``pip install -e ".[serve]"``); nothing here is imported by ``import stream_r1_fast``.
"""
