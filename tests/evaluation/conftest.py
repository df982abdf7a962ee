"""Tiny models gain nothing from intra-op threads, and on a busy CI machine the thread pool's
contention made these tests up to ten times slower; one thread keeps their run time steady."""

import torch

torch.set_num_threads(1)
