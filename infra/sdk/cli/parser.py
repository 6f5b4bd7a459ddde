"""Every `maskflow` command with its flags and help; each sets `run(args, cfg) -> exit code`."""
from __future__ import annotations

import argparse

from maskflow.infra.domain.catalog import DEFAULT, accepted_names
from maskflow.infra.domain.outputs import RESULT_KINDS
from maskflow.infra.sdk.cli import batch, recipe, serve, status, submit, watch

DESCRIPTION = "`maskflow`: one entry point for running the stack and using it."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskflow", description=DESCRIPTION)
    parser.add_argument("--config", help="TOML config file (default: $MASKFLOW_CONFIG); "
                                         "every key can also be set as MASKFLOW_<SECTION>_<KEY>")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serving_commands(commands)
    api_options = _api_options()
    _add_submit(commands, api_options)
    _add_status(commands, api_options)
    _add_batch(commands, api_options)
    watch.add_parser(commands, api_options)
    return parser


def _add_serving_commands(commands) -> None:
    up = commands.add_parser("up", help="install what is missing, start Redis, MinIO, the API and "
                                        "workers in the background, and return once all are ready")
    up.add_argument("--servers-only", action="store_true", help="start only Redis and MinIO")
    up.set_defaults(run=serve.up)
    commands.add_parser("down", help="stop everything `up` started").set_defaults(run=serve.down)
    commands.add_parser("api", help="serve the HTTP API in the foreground (waitress)"
                        ).set_defaults(run=serve.api)
    worker = commands.add_parser("worker", help="run one worker in the foreground")
    worker.add_argument("--id", help="worker id, unique per live process")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.set_defaults(run=serve.worker)


def _api_options() -> argparse.ArgumentParser:
    """--api-url and --token, shared by the commands that talk to the API."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--api-url", help="API base URL (default: http://<api.host>:<api.port> "
                                           "from the config)")
    options.add_argument("--token", help="bearer token (default: config api.token / "
                                         "MASKFLOW_API_TOKEN)")
    return options


def _result_files() -> str:
    return " and ".join(f"<stem>{kind.local_suffix} ({kind.what.split(':')[0]})" for kind in RESULT_KINDS)


def _add_model_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--model", choices=accepted_names(), metavar="NAME",
                        help=f"the model {what}: {', '.join(accepted_names())} (`GET /api/v1/models` says "
                             f"what each is good at; default: {DEFAULT}, or what the server's "
                             f"models.by_prefix names for the key)")


def _add_submit(commands, api_options: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "submit", parents=[api_options], help="upload images through the API (and wait for results)",
        description="Upload images through the API. With --wait, poll until each is done "
                    f"(2 s polls, at most 150); with --out, also download {_result_files()} into DIR.")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--wait", action="store_true", help="wait until each task is done")
    parser.add_argument("--out", metavar="DIR", help="download results into DIR (implies --wait)")
    parser.add_argument("--presigned", action="store_true",
                        help="upload straight to MinIO with a presigned POST from the API")
    _add_model_option(parser, "to segment every IMAGE with")
    recipe.add_flags(parser)
    parser.set_defaults(run=submit.submit)


def _add_status(commands, api_options: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "status", parents=[api_options], help="show a task, the task of an object, or a batch",
        description="Show one task by id, the task of an uploaded object (--key input/...), "
                    "or counts and failures of a batch (--batch input/<name>/).")
    parser.add_argument("task_id", nargs="?", metavar="TASK_ID")
    parser.add_argument("--key", help="object key, e.g. input/holiday/beach.jpg")
    parser.add_argument("--batch", help="batch folder, e.g. input/holiday/")
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
    parser.set_defaults(run=status.status)


def _add_batch(commands, api_options: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "batch", parents=[api_options], help="upload a folder, show progress, mirror results",
        description="Upload every image under DIR to input/<NAME>/ (keeping subfolders), show "
                    "upload and processing progress, and mirror results into --out with the "
                    "same tree. A re-run skips files whose results are already in --out.")
    parser.add_argument("dir", metavar="DIR")
    parser.add_argument("--prefix", metavar="NAME", help="batch name: objects go to "
                                                         "input/NAME/... (default: DIR's name)")
    parser.add_argument("--out", metavar="DIR", help=f"write {_result_files()} here, mirroring DIR's tree")
    parser.add_argument("--via", choices=("s3", "api"), default="s3",
                        help="upload straight to MinIO with the config's credentials (s3, the "
                             "default, like mc mirror) or through the API (api)")
    _add_model_option(parser, "to segment every image with (with --via s3, set as each "
                              "object's user metadata model=NAME)")
    recipe.add_flags(parser)
    parser.set_defaults(run=batch.batch)
