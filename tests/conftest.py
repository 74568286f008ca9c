import torch

# One intra-op thread: on a shared 2-core machine, OpenMP threads that wait on each other make a ResNet-110
# forward pass take seconds instead of 20 ms.
torch.set_num_threads(1)
