"""`python -m whisper_coreml.server --port 8000`: the serve command on its own."""

import typer

from .command import serve_command

typer.run(serve_command)
