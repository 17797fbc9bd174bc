"""The typer application: one command per module of :mod:`ckptcore.cli`.

Command modules import the library, numpy and rich only inside their
functions, so ``ckptcore --help`` starts quickly.
"""

from __future__ import annotations

from typing import Annotated

import typer

from . import _common

StorageOpts = Annotated[list[str] | None, typer.Option(
    "--storage-option", "-o", metavar="KEY=VALUE",
    help="fsspec storage option (repeatable), e.g. -o anon=true -o endpoint_url=http://127.0.0.1:9000")]
Json = Annotated[bool, typer.Option("--json", help="machine-readable JSON on stdout")]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="no progress bar (none is drawn off a terminal)")]


def build() -> typer.Typer:
    app = typer.Typer(name="ckptcore", add_completion=False, no_args_is_help=True,
                      pretty_exceptions_enable=False, rich_markup_mode=None,
                      help="Look inside, compare, verify and convert ckptcore checkpoints "
                           "(local paths or fsspec URLs: s3://, gs://, memory://). "
                           "Exit codes: 0 success, 1 a finding (corruption, differences), 2 usage error.")

    @app.command("ls")
    @_common.command
    def ls_cmd(directory: Annotated[str, typer.Argument(help="directory or bucket prefix")],
               storage_option: StorageOpts = None, json: Json = False) -> None:
        """The checkpoints in DIRECTORY, oldest first: number, time, size, format, complete or partial, latest."""
        from .ls import run
        run(directory, _common.parse_storage_options(storage_option), json)

    @app.command("inspect")
    @_common.command
    def inspect_cmd(path: Annotated[str, typer.Argument(
                        help="checkpoint (prefix, .index file, or directory: its latest)")],
                    keys: Annotated[bool, typer.Option(
                        "--keys", help="the flat key list (tf.train.list_variables)")] = False,
                    storage_option: StorageOpts = None, json: Json = False) -> None:
        """The object graph of a checkpoint as a tree: names, adapters, shapes, dtypes, bytes, slots, metadata."""
        from .inspect import run
        run(path, _common.parse_storage_options(storage_option), json, keys)

    @app.command("diff")
    @_common.command
    def diff_cmd(a: Annotated[str, typer.Argument(help="first checkpoint")],
                 b: Annotated[str, typer.Argument(help="second checkpoint")],
                 values: Annotated[bool, typer.Option(
                     "--values", help="read both and report max abs/rel difference")] = False,
                 storage_option: StorageOpts = None, json: Json = False) -> None:
        """Keys added, removed, changed in shape or dtype, and (from checksums) changed in value. Exit 1 if any."""
        from .diff import run
        run(a, b, _common.parse_storage_options(storage_option), json, values)

    @app.command("verify")
    @_common.command
    def verify_cmd(paths: Annotated[list[str], typer.Argument(help="checkpoints to check")],
                   storage_option: StorageOpts = None, json: Json = False, no_progress: NoProgress = False) -> None:
        """Check every tensor's checksum. Exit 1, naming each corrupt file and key, if any is corrupt."""
        from .verify import run
        run(paths, _common.parse_storage_options(storage_option), json, not no_progress)

    @app.command("convert")
    @_common.command
    def convert_cmd(src: Annotated[str, typer.Argument(
                        help="checkpoint: ckptcore, TensorFlow or a .safetensors file")],
                    dst: Annotated[str, typer.Argument(
                        help="destination: a .safetensors file, else a checkpoint prefix")],
                    to: Annotated[str | None, typer.Option("--to", help="output format: ckptcore, safetensors or "
                                                              "tensorflow (default: from DST's suffix)")] = None,
                    storage_option: StorageOpts = None, json: Json = False, no_progress: NoProgress = False) -> None:
        """Convert between ckptcore, TensorFlow and safetensors checkpoints, one tensor in memory at a time."""
        from .convert import run
        run(src, dst, to, _common.parse_storage_options(storage_option), json, not no_progress)

    return app
