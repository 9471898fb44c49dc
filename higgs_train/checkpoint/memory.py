"""Memory figures taken at every save: logged, recorded in the checkpoint, and acted on when memory is short."""

from __future__ import annotations

import gc

import psutil
import torch

LOW_MEMORY_FRACTION = 0.10  # below this share free (host or GPU), collect garbage and empty the CUDA cache


def memory_report() -> dict:
    """Host RSS and available memory, and per-GPU allocated / reserved / free, in MiB."""
    mib = 1 << 20
    vm = psutil.virtual_memory()
    report = {
        "host_rss_mib": psutil.Process().memory_info().rss // mib,
        "host_available_mib": vm.available // mib,
        "host_total_mib": vm.total // mib,
    }
    if torch.cuda.is_available():
        gpus = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            gpus.append(
                {
                    "device": i,
                    "allocated_mib": torch.cuda.memory_allocated(i) // mib,
                    "reserved_mib": torch.cuda.memory_reserved(i) // mib,
                    "free_mib": free // mib,
                    "total_mib": total // mib,
                }
            )
        report["gpus"] = gpus
    return report


def relieve_if_low(report: dict) -> bool:
    """Collect garbage and empty the CUDA cache when host or any GPU is below LOW_MEMORY_FRACTION free."""
    low = report["host_available_mib"] < LOW_MEMORY_FRACTION * report["host_total_mib"]
    low |= any(g["free_mib"] < LOW_MEMORY_FRACTION * g["total_mib"] for g in report.get("gpus", []))
    if low:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return low
