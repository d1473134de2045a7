"""What every benchmark records: the machine, the versions, the exact command."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def _cpu_microarchitecture() -> str | None:
    """LLVM's name for the host CPU (e.g. ``znver3``): "AMD EPYC" alone does not
    tell a Zen 1 from a Zen 3, whose vector units differ twofold in width."""
    try:
        import llvmlite.binding as llvm

        return llvm.get_host_cpu_name()
    except (ImportError, RuntimeError):
        return None


def machine_info() -> dict:
    import larq as lq
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_microarchitecture": _cpu_microarchitecture(),
        "cores": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "tensorflow": tf.__version__,
        "larq": lq.__version__,
        "python": platform.python_version(),
    }


def command_line(module: str, argv=None) -> str:
    """The command that reruns a benchmark, as typed in the repository's root."""
    args = list(argv) if argv is not None else sys.argv[1:]
    return " ".join(["python", "-m", module, *args])


def finish(benchmark: str, module: str, argv, json_path=None, **content) -> dict:
    """The benchmark's report with machine and command; written to ``json_path``."""
    report = {
        "benchmark": benchmark,
        "machine": machine_info(),
        "command": command_line(module, argv),
        **content,
    }
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(path)
    return report
