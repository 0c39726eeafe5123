"""The commands: ``atlas-run`` trains a student from a pipeline file; ``atlas-encode`` applies one.

Exit codes (both): 0 done; 2 a configuration or input problem (one line, no
traceback); 1 anything else, including a diverged run or a full disk; 130
interrupted by Ctrl-C, 143 stopped by SIGTERM (a checkpoint was saved either
way); 141 the reader of the output went away (a broken pipe).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
import warnings

import torch

from . import distributed
from .config import MAX_SEED, RESERVED, load_config, loss_tau_range
from .errors import AtlasError, PluginError
from .orchestrator import atlas_run_command, run_pipeline
from .params import parameters
from .refine import REFINE_MAX_EPOCHS
from .registry import get_registry
from .trainer import dry_run_plan

USAGE = ("atlas-run PIPELINE.toml [--set KEY.PATH=VALUE ...] [--resume | --overwrite] [--dry-run] [--quiet]\n"
         "       atlas-run --list-plugins [--json]")
ENCODE_USAGE = ("atlas-encode RUN_DIR|student.pt INPUT|- [-o OUT [--overwrite]] [--loader NAME] [--key NAME] "
                "[--model FOLDER] [--batch-size N] [--precision float32|bfloat16] [--refine N] [--seed N] [--quiet]\n"
                "       atlas-encode --export-sentence-transformers DIR [--model FOLDER] RUN_DIR|student.pt")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message} (usage: {self.usage.splitlines()[0]})\n")


def _version() -> str:
    from .registry import _own_version

    return f"%(prog)s {_own_version() or 'unknown (not installed)'}"


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="atlas-run", usage=USAGE, description="Distil teacher embeddings into a small student.")
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("pipeline", nargs="?", help="the pipeline .toml file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a value of the pipeline file (TOML syntax), e.g. --set train.batch_size=64")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output.dir")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous run in output.dir (removes only files atlas-run wrote)")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything and print the pipeline and its step count; do not train")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--list-plugins", action="store_true", help="list the registered plugins and exit")
    p.add_argument("--json", action="store_true", help="with --list-plugins: print JSON")
    return p


def _say(line: str) -> None:
    """``line`` on stderr in one write: the ranks of a torchrun run share it, and ``print`` writes the text and
    its newline apart, so two ranks' lines ran together."""
    sys.stderr.write(line + "\n")


def _warn(message: str) -> None:
    _say(f"atlas-run: warning: {message}")


def list_plugins(as_json: bool) -> str:
    """Every plugin with its description, provider and the parameters a pipeline file may set."""
    registry = get_registry()
    infos = registry.available()
    params = {(i.kind, i.name): parameters(i.obj, RESERVED[i.kind]) for i in infos}
    taus = {i.name: _tau_range(registry, i) for i in infos if i.kind == "loss"}  # a loss's default [schedule]
    if as_json:
        entries = [{"kind": i.kind, "name": i.name, "description": i.description, "distribution": i.distribution,
                    "version": i.version, "params": params[i.kind, i.name],
                    **({"tau_range": taus[i.name]} if i.kind == "loss" else {}),
                    **({"default_loss": getattr(i.obj, "default_loss", None)} if i.kind == "student" else {})}
                   for i in infos]
        return json.dumps(entries, indent=2, default=repr)  # a plugin's attribute may hold anything
    rows = [("KIND", "NAME", "DESCRIPTION", "PROVIDED BY", "PARAMETERS (default)")]
    rows += [(i.kind, i.name, i.description + (_range(i, taus[i.name]) if i.kind == "loss" else _own_loss(i)),
              f"{i.distribution} {i.version or ''}".strip(),
              ", ".join(p["name"] + (f"={_toml(p['default'])}" if p["default"] is not None else "")
                        for p in params[i.kind, i.name])) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    return "\n".join("  ".join(f"{r[c]:<{widths[c]}}" for c in range(4)) + f"  {r[4]}".rstrip() for r in rows)


def _tau_range(registry, info) -> list[float] | None:
    """The default [schedule] start and end of a loss (with its default parameters); None when misdeclared."""
    try:
        return list(loss_tau_range(registry, info.name))
    except PluginError:
        return None


def _range(info, taus) -> str:
    follows = getattr(info.obj, "tau_range", None)
    follows = f" as {follows}" if isinstance(follows, str) else ""
    return f" [tau{follows} {taus[0]:g} -> {taus[1]:g}]" if taus else " [invalid tau_range]"


def _own_loss(info) -> str:
    """A student's ``default_loss``, the loss a pipeline gets when ``[loss]`` names none."""
    loss = getattr(info.obj, "default_loss", None) if info.kind == "student" else None
    return f" [loss {loss['name']}]" if isinstance(loss, dict) and isinstance(loss.get("name"), str) else ""


def _toml(value) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def run(args: argparse.Namespace) -> int:
    if args.list_plugins:
        print(list_plugins(args.json))
        return 0
    if not args.pipeline:
        raise _usage("a pipeline file is required (or --list-plugins)")
    if args.resume and args.overwrite:
        raise _usage("--resume and --overwrite cannot be used together")
    config = load_config(args.pipeline, args.overrides)
    progress = not args.quiet and sys.stderr.isatty()
    result = run_pipeline(config, resume=args.resume, overwrite=args.overwrite, dry_run=args.dry_run,
                          progress=progress, echo=lambda m: print(m, flush=True), warn=_warn,
                          command=atlas_run_command(args.pipeline, args.overrides))
    if not result.dist.is_main:  # under torchrun every rank checks and trains; rank 0 writes, and says so
        return 0
    if args.dry_run:
        print(result.pipeline.describe())
        print(dry_run_plan(result.pipeline, result.dist.world))
        print("dry run: everything checks out; nothing was trained")
    else:
        shown = [str(config.run_dir / name) for name in ("report.md", "map.html") if (config.run_dir / name).is_file()]
        see = f"; see {' and '.join(shown)}" if shown else ""
        print(f"done: student written to {config.run_dir / 'student.pt'}{see}")
    return 0


class _UsageError(AtlasError):
    pass


def _usage(message: str, usage: str = USAGE) -> _UsageError:
    return _UsageError(f"{message} (usage: {usage.splitlines()[0]})")


def _encode_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="atlas-encode", usage=ENCODE_USAGE,
                description="Map new vectors or texts with a trained student (texts: with its recorded teacher "
                            "model).")
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("student", help="a run folder, or its student.pt")
    p.add_argument("input", nargs="?",
                   help="vectors (.npy, .npz, .pt, .safetensors, .parquet, .feather/.arrow, a Hugging Face dataset "
                        "folder, .csv/.tsv with an 'embedding' column, .jsonl with 'embedding' or a list per line or "
                        "OpenAI Batch output, an API's or a vector database's answer as .json; a vector as a list, "
                        "its text or base64), "
                        "texts (.txt, .jsonl with 'text', .csv, .tsv, .parquet or .feather/.arrow with a 'text' "
                        "column) or - for texts on stdin, one per line")
    p.add_argument("-o", "--output", help="output file: .parquet, .npy, .csv or .jsonl (default: JSON lines on "
                                          "stdout)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (default: refuse)")
    p.add_argument("--loader", help="the teacher plugin that reads INPUT (default: chosen by its suffix)")
    p.add_argument("--key", help="the array (.npz), tensor (.pt, .safetensors) or column (.parquet, .jsonl) that "
                                 "holds the vectors (default: the loader's, e.g. 'embeddings' or 'embedding'); in "
                                 "a table of texts, their column")
    p.add_argument("--model", help="embed texts (or export) with this model, a local folder, in place of the one the "
                                   "map recorded (which moved, say)")
    p.add_argument("--batch-size", type=_whole(1), default=65536, help="rows per forward pass (default 65536)")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--refine", type=_whole(0, REFINE_MAX_EPOCHS), default=0,
                   help="epochs of refinement against the training map (map.pt; default 0: the student alone)")
    p.add_argument("--seed", type=_whole(0, MAX_SEED), default=0, help="seed of --refine's negative samples")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--export-sentence-transformers", metavar="DIR", dest="export",
                   help="write a SentenceTransformer model folder (teacher model + student) instead of encoding")
    return p


def _whole(lo: int, hi: int | None = None):
    """An argparse type: a whole number in ``[lo, hi]``."""
    def parse(text: str) -> int:
        value = int(text) if text.isdigit() else None
        if value is None or value < lo or (hi is not None and value > hi):
            bound = f" and at most {hi:,}" if hi is not None else ""
            raise argparse.ArgumentTypeError(f"expected a whole number >= {lo}{bound}, got {text!r}")
        return value
    return parse


def encode(args: argparse.Namespace) -> int:
    from .encode import encode_file
    from .student import load_student

    if args.overwrite and not args.output:
        raise _usage("--overwrite replaces the file -o names; give -o OUT as well", ENCODE_USAGE)
    student = load_student(args.student)
    if args.model is not None:
        student.use_model(args.model, "--model")
    if args.export:
        if args.input:
            raise _usage("--export-sentence-transformers takes the run folder only, no INPUT", ENCODE_USAGE)
        folder = student.to_sentence_transformer(args.export, progress=not args.quiet)
        _say(f"atlas-encode: SentenceTransformer model written to {folder}; SentenceTransformer('{folder}')"
             ".encode(texts) returns the map's coordinates")
        return 0
    if not args.input:
        raise _usage("INPUT is required (a file, or - for texts on stdin)", ENCODE_USAGE)
    if args.refine:
        student.check_refinable(f"--refine {args.refine}")  # before any text is embedded
    rows = encode_file(student, args.input, args.output, loader=args.loader, key=args.key,
                       batch_size=args.batch_size, precision=args.precision, refine=args.refine, seed=args.seed,
                       progress=not args.quiet and sys.stderr.isatty(), overwrite=args.overwrite)
    if args.output:
        _say(f"atlas-encode: {rows:,} row{'s' * (rows != 1)} written to {args.output}")
    return 0


def encode_main(argv=None) -> int:
    """``atlas-encode``: exit codes as for ``atlas-run``."""
    return _guarded("atlas-encode", _encode_parser(), encode, argv)


def main(argv=None) -> int:
    return _guarded("atlas-run", _parser(), run, argv)


def _guarded(prog: str, parser: argparse.ArgumentParser, command, argv) -> int:
    """Run ``command(args)``: an :class:`AtlasError` is one line and its exit code, never a traceback."""
    warnings.showwarning = lambda message, category, *a, **k: _say(
        f"{prog}: warning: {str(message).removeprefix('atlas: ')}")
    # the toolkit's own warnings are messages for the user: a warning line even under PYTHONWARNINGS=error
    warnings.filterwarnings("default", message="atlas: ")
    args = parser.parse_args(argv)
    try:
        return command(args)
    except AtlasError as exc:
        _say(f"{prog}: error: {one_line(exc)}")
        return exc.exit_code
    except KeyboardInterrupt:
        _say(f"{prog}: interrupted")
        return 130
    except BrokenPipeError:  # the reader went away (atlas-run --list-plugins | head): stop quietly
        _silence_stdout()
        return 128 + signal.SIGPIPE
    except torch.cuda.OutOfMemoryError as exc:  # the machine's limit, not a bug: what to change instead
        what = ". ".join(one_line(exc).split(". ")[:2]).rstrip(".")  # torch's first two sentences: what it tried
        _say(f"{prog}: error: the GPU ran out of memory ({what}); lower train.batch_size or "
             'train.eval_rows, or set train.device = "cpu" '
             "(--resume continues a run with either of the last two changed)")
        return 1
    except RecursionError:
        _say(f"{prog}: error: the input is nested too deeply to process")
        return 2
    except Exception as exc:
        if said := distributed.lost_peer(exc):  # not a bug here: the rank that stopped first said why
            _say(f"{prog}: error: rank {os.environ.get('RANK', '?')} stopped: another rank of this torchrun run "
                 f"stopped first (its error is above, or in its host's log; here: {said})")
            return 1
        traceback.print_exc()
        _say(f"{prog}: internal error (above); please report it")
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
