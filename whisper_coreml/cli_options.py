"""The model options `transcribe` and `serve` share, declared once so their help and defaults agree."""

from __future__ import annotations

from typing import Annotated

import typer

EngineOption = Annotated[
    str, typer.Option(help="auto, torch, coreml (macOS) or mil (converted model, any OS).", metavar="ENGINE")
]
DeviceOption = Annotated[str | None, typer.Option(help="cpu, cuda, mps or auto (torch engine).", metavar="DEVICE")]
ComputeTypeOption = Annotated[
    str,
    typer.Option(
        help="auto, float32, int8, bfloat16, int8_bfloat16 or float16 (torch engine); auto: the fastest "
        "as accurate as float32 here (on a CPU int8, its encoder in bfloat16 where the CPU has it; "
        "float16 on GPUs).",
        metavar="TYPE",
    ),
]
