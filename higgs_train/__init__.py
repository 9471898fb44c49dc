"""LoRA fine-tuning of Higgs Audio v2."""

import logging as _logging


class _NoCpuFallbackNote(_logging.Filter):
    """accelerate imports DeepSpeed whenever it is installed, and DeepSpeed then warns once per process that it
    fell back to the CPU, with no ZeRO config in use: a line about nothing the user asked for."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "Setting accelerator to CPU" not in record.getMessage()


_logging.getLogger("DeepSpeed").addFilter(_NoCpuFallbackNote())
