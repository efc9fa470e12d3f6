"""The options that several `pld` commands share, each declared once with one help text, and
``classifier_options``, which turns their values into ``ClassifierOptions``.

Knows the options' names and typer; nothing of what a command does with them. Not re-exported
from ``pld.runtime``, so that importing the runtime does not import typer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .options import ClassifierOptions, FlashAttn, tuning_overrides

__all__ = [
    "AllowModelMismatchOpt",
    "BatchSizeOpt",
    "BundleOpt",
    "BundlesOpt",
    "CalibrateOpt",
    "DataOpt",
    "DeviceDirOpt",
    "DeviceDirRequiredOpt",
    "FlashAttnOpt",
    "GpuLayersOpt",
    "KvTypeOpt",
    "MaxBatchOpt",
    "ModelOpt",
    "NCtxOpt",
    "ThreadsOpt",
    "TruncateOpt",
    "UbatchOpt",
    "batch_size_of",
    "bundle_option",
    "classifier_options",
    "data_option",
]

BUNDLE_HELP = "Bundle file or shipped bundle name (see 'pld bundle list')."
DEVICE_DIR_HELP = "Device directory ('pld device pull' fills it with the active bundles)."
DATA_HELP = "JSON Lines records: 'text' (and 'id'), with 'label' where accuracy is measured."


def bundle_option(default: str) -> Any:
    """``--bundle`` for a command that has a default bundle; ``default`` says which in the help."""
    return typer.Option("--bundle", "-b", help=BUNDLE_HELP, show_default=default)


def data_option(default: str) -> Any:
    """``--data`` for a command that has default records; ``default`` says which in the help."""
    return typer.Option("--data", help=DATA_HELP, show_default=default)


# --data has no short form: -d is --device-dir wherever a command takes one.
BundleOpt = Annotated[str, typer.Option("--bundle", "-b", help=BUNDLE_HELP)]
# a command that serves several bundles at once takes --bundle once per bundle
BundlesOpt = Annotated[list[str] | None, typer.Option("--bundle", "-b", help=BUNDLE_HELP)]
DataOpt = Annotated[Path, typer.Option("--data", help=DATA_HELP)]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model name or .gguf path (default: the bundle's student)."),
]
DeviceDirOpt = Annotated[Path | None, typer.Option("--device-dir", "-d", help=DEVICE_DIR_HELP)]
# the same option for the commands that work on a device directory and nothing else
DeviceDirRequiredOpt = Annotated[Path, typer.Option("--device-dir", "-d", help=DEVICE_DIR_HELP)]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="CPU threads (0: all cores).")]
GpuLayersOpt = Annotated[
    int, typer.Option("--gpu-layers", help="Layers to offload to a GPU (-1: all).")
]
BatchSizeOpt = Annotated[
    int,
    typer.Option(
        "--batch-size",
        help="Requests decoded together (1 is fastest on a CPU; raise it on a GPU).",
    ),
]
# --batch-size's earlier name in `pld serve`, still accepted and not shown (batch_size_of)
MaxBatchOpt = Annotated[
    int | None, typer.Option("--max-batch", hidden=True, help="The old name of --batch-size.")
]
CalibrateOpt = Annotated[
    bool | None,
    typer.Option(
        "--calibrate/--no-calibrate",
        help="Contextual calibration (default: the bundle's choice on its student, off on others).",
    ),
]
AllowModelMismatchOpt = Annotated[
    bool,
    typer.Option(
        "--allow-model-mismatch/--no-allow-model-mismatch",
        help="Run a model other than the bundle's.",
    ),
]
NCtxOpt = Annotated[
    int, typer.Option("--n-ctx", help="Context size in tokens (0: fit the prompt).")
]
TruncateOpt = Annotated[
    bool,
    typer.Option("--truncate/--no-truncate", help="Cut inputs that do not fit instead of failing."),
]
# llama.cpp tuning knobs (ClassifierOptions.type_k/type_v, n_ubatch, flash_attn); left out, each
# keeps the library default.
KvTypeOpt = Annotated[
    str | None,
    typer.Option(
        "--kv-type",
        help="KV cache type for K and V (f16, q8_0, q4_0, ...), or K/V such as q8_0/f16; a "
        "quantized V needs --flash-attn on. Default: f16.",
    ),
]
UbatchOpt = Annotated[
    int | None,
    typer.Option("--ubatch", help="Tokens per llama.cpp compute step (0: the decode batch, 512)."),
]
FlashAttnOpt = Annotated[
    FlashAttn | None,
    typer.Option(
        "--flash-attn", help="Flash attention: on, off or auto (llama.cpp decides). Default: off."
    ),
]


def batch_size_of(batch_size: int, max_batch: int | None) -> int:
    """``--batch-size``, or the value given under its old name ``--max-batch``."""
    return batch_size if max_batch is None else max_batch


def classifier_options(
    *,
    threads: int = 0,
    gpu_layers: int = 0,
    batch_size: int = 1,
    calibrate: bool | None = None,
    truncate: bool = False,
    n_ctx: int = 0,
    allow_model_mismatch: bool = False,
    kv_type: str | None = None,
    ubatch: int | None = None,
    flash_attn: FlashAttn | None = None,
) -> ClassifierOptions:
    """``ClassifierOptions`` from the shared options' values, named as on the command line."""
    return ClassifierOptions(
        n_threads=threads,
        n_gpu_layers=gpu_layers,
        max_batch=batch_size,
        calibrate=calibrate,
        truncate=truncate,
        n_ctx=n_ctx,
        allow_model_mismatch=allow_model_mismatch,
        **tuning_overrides(kv_type, ubatch, flash_attn),
    )
