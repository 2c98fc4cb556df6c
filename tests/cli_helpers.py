"""Shared pieces of the CLI tests: a tiny diffusers Wan folder, a guard that fails the test if
the model is loaded, and running a ``main`` in-process for its exit status and output."""

from __future__ import annotations

import pytest
from tiny_wan import write_pipeline_dir

from stream_r1_fast.cli import main as cli_main
from stream_r1_fast.inference import StreamingPipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_pipeline_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def no_loading(monkeypatch):
    """Loading the model fails the test: the error must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad option was reported")

    monkeypatch.setattr(StreamingPipeline, "from_pretrained", refuse)


def run(argv, capsys, main=cli_main):
    """-> (exit status, stdout, stderr) of ``main(argv)``, SystemExit included."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err
