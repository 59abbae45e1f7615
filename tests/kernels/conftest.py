"""Kernel tests run the Triton kernels compiled on a CUDA device, or under Triton's CPU interpreter
when there is none. The interpreter is chosen here, before anything imports triton."""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
