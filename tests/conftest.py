import atexit
import os
import shutil
import tempfile

import torch

# One intra-op thread: on a shared 2-core machine, OpenMP threads that wait on each other make a ResNet-110
# forward pass take seconds instead of 20 ms.
torch.set_num_threads(1)

# Decoded data and stored FSP targets go to a throw-away cache, never the user's ~/.cache/fspkd.
os.environ["FSPKD_CACHE"] = tempfile.mkdtemp(prefix="fspkd-test-cache-")
atexit.register(shutil.rmtree, os.environ["FSPKD_CACHE"], ignore_errors=True)
