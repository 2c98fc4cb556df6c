import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Hypothesis budgets: CI runs on 2 CPU cores; the GPU profile explores more.
settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile(
    "gpu",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


_ONE_THREAD_MODULES = ("test_model", "test_streaming", "test_cli", "test_toy", "test_training", "test_checkpoint",
                       "test_serve", "test_chunk_step", "test_readme", "test_generate", "test_recache",
                       "test_rotated", "test_pipeline", "test_wan")


@pytest.fixture(autouse=True)
def _single_thread_for_tiny_models(request):
    # Tiny-model tests are dominated by thread hand-off on small ops: one thread is ~4x faster
    # on a 2-core CI machine. Kernel tests keep the default so parallel_for runs in parallel.
    if request.module.__name__.split(".")[-1].startswith(_ONE_THREAD_MODULES):
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(previous)
    else:
        yield
