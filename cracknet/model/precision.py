"""The precision policy shared by training and scoring: which device, and bf16 autocast where it pays.

    precision = Precision.for_training(device)     # or Precision.for_inference(device)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Precision:
    autocast_dtype: Optional[torch.dtype] = None
    channels_last: bool = False

    @staticmethod
    def for_training(device: torch.device, allow_bf16: bool = True) -> "Precision":
        """Training: bf16 autocast and channels_last on GPUs and on CPUs with native bf16 instructions
        (AVX512-BF16, AMX: about 1.5x float32 there, with the same accuracy), plain float32 elsewhere."""
        if allow_bf16 and (device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return Precision(torch.bfloat16, channels_last=True)
        return Precision()

    @staticmethod
    def for_inference(device: torch.device, allow_bf16: bool = True) -> "Precision":
        """Scoring: channels_last everywhere (oneDNN on CPUs is much faster with it), and bf16
        autocast on GPUs and on CPUs with native bf16 instructions (AVX512-BF16, AMX)."""
        bf16 = allow_bf16 and (device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return Precision(torch.bfloat16 if bf16 else None, channels_last=True)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)
