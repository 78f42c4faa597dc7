import os
import random
import sys
import zlib

import pytest
import torch

# Tests import the package from the source tree (the extension is built in place).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Fresh random inputs on every run; set GPTQ_TEST_SEED to replay one (the header shows the seed used).
SEED = int(os.environ.get("GPTQ_TEST_SEED", random.randrange(1 << 30)))


def pytest_report_header(config):
    return f"gptq_kernels test seed: GPTQ_TEST_SEED={SEED}"


@pytest.fixture(autouse=True)
def _seed_each_test(request):
    torch.manual_seed(SEED ^ zlib.crc32(request.node.nodeid.encode()))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


# Relative error bounds of kernel outputs against the float64 reference, per activation dtype.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
