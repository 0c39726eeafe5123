"""``atlas-run``: train a student from a pipeline file.

Exit codes: 0 done; 2 a configuration or input problem (one line, no
traceback); 1 anything else, including a diverged run or a full disk; 130
interrupted by Ctrl-C, 143 stopped by SIGTERM (a checkpoint was saved either
way); 141 the reader of the output went away (a broken pipe).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import traceback
import warnings

from .config import load_config
from .errors import AtlasError
from .orchestrator import run_pipeline
from .registry import get_registry

USAGE = ("atlas-run PIPELINE.toml [--set KEY.PATH=VALUE ...] [--resume | --overwrite] [--dry-run] [--quiet]\n"
         "       atlas-run --list-plugins [--json]")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"atlas-run: error: {message} (usage: {USAGE.splitlines()[0]})\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="atlas-run", usage=USAGE, description="Distil teacher embeddings into a small student.")
    p.add_argument("pipeline", nargs="?", help="the pipeline .toml file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a value of the pipeline file (TOML syntax), e.g. --set train.batch_size=64")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output.dir")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous run in output.dir (removes only files atlas-run wrote)")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the pipeline; do not train")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--list-plugins", action="store_true", help="list the registered plugins and exit")
    p.add_argument("--json", action="store_true", help="with --list-plugins: print JSON")
    return p


def _warn(message: str) -> None:
    print(f"atlas-run: warning: {message}", file=sys.stderr)


def list_plugins(as_json: bool) -> str:
    infos = get_registry().available()
    if as_json:
        return json.dumps([{"kind": i.kind, "name": i.name, "description": i.description,
                            "distribution": i.distribution, "version": i.version} for i in infos], indent=2)
    rows = [("KIND", "NAME", "DESCRIPTION", "PROVIDED BY")]
    rows += [(i.kind, i.name, i.description, f"{i.distribution} {i.version or ''}".strip()) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows)


def run(args: argparse.Namespace) -> int:
    if args.list_plugins:
        print(list_plugins(args.json))
        return 0
    if not args.pipeline:
        raise _usage("a pipeline file is required (or --list-plugins)")
    if args.resume and args.overwrite:
        raise _usage("--resume and --overwrite cannot be used together")
    config = load_config(args.pipeline, args.overrides)
    command = "atlas-run " + " ".join(shlex.quote(a) for a in [args.pipeline, *sum((["--set", o] for o in args.overrides), [])])
    progress = not args.quiet and sys.stderr.isatty()
    result = run_pipeline(config, resume=args.resume, overwrite=args.overwrite, dry_run=args.dry_run,
                          progress=progress, echo=lambda m: print(m, flush=True), warn=_warn, command=command)
    if args.dry_run:
        print(result.pipeline.describe())
        print("dry run: everything checks out; nothing was trained")
    else:
        print(f"done: student written to {config.run_dir / 'student.pt'}")
    return 0


class _UsageError(AtlasError):
    pass


def _usage(message: str) -> _UsageError:
    return _UsageError(f"{message} (usage: {USAGE.splitlines()[0]})")


def main(argv=None) -> int:
    warnings.showwarning = lambda message, category, *a, **k: _warn(str(message).removeprefix("atlas: "))
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except AtlasError as exc:
        print(f"atlas-run: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("atlas-run: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (atlas-run --list-plugins | head): stop quietly
        _silence_stdout()
        return 128 + signal.SIGPIPE
    except RecursionError:
        print("atlas-run: error: the input is nested too deeply to process", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print("atlas-run: internal error (above); please report it", file=sys.stderr)
        return 1


def one_line(exc: BaseException) -> str:
    """An error message as one line (a message with line breaks keeps its first line and the rest folded)."""
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip())


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
