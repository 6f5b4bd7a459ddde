"""functions/worker.reuse_freed_buffers: a worker reuses image buffers instead of refaulting them."""
from __future__ import annotations

import subprocess
import sys

# Page faults per image while allocating, filling and freeing buffers the size of one
# 1024x768 photo's (decoded RGB, RGBA cut-out, a channel), 50 times.
FAULTS_PER_IMAGE = """
import resource, sys
import numpy as np
from maskflow.functions.worker import reuse_freed_buffers
if sys.argv[1] == "tuned":
    assert reuse_freed_buffers()
def one_image():
    buffers = [np.ones(n, np.uint8) for n in (768 * 1024 * 3, 768 * 1024 * 4, 768 * 1024)]
    del buffers
one_image()  # the first one always faults
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    one_image()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50)
"""


def faults_per_image(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_IMAGE, mode], capture_output=True,
                         text=True, check=True)
    return float(out.stdout)


def test_freed_image_buffers_are_reused_without_page_faults():
    default, tuned = faults_per_image("default"), faults_per_image("tuned")
    assert default > 1000  # 6 MB freed at the heap's top goes back to the kernel, so faults again
    assert tuned < 10
