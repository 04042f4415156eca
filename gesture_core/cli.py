"""How every command (``python -m training.*`` and ``service.*``) reports a user's mistake: one
``error: <reason>`` line on stderr and exit code 2, never a traceback.

The project's own errors (a bad checkpoint, an undecodable image, a dataset or setting that does not
fit) are ValueErrors whose message is written for the user, and a file that cannot be read or
written (missing, no permission, disk full) is an OSError: ``@command`` on a ``main`` turns both
into that line, so no command needs its own copy of the handler. Anything else is a bug, and keeps
its traceback. A warning is one ``warning: <message>`` line too, not the file, line and code that
raised it.
"""

from __future__ import annotations

import argparse
import codecs
import difflib
import errno
import functools
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NoReturn, ParamSpec

from gesture_core.checkpoint import checkpoint_file
from gesture_core.class_names import some_of
from gesture_core.hands import HandModelsUnavailableError
from gesture_core.images import IMAGE_SUFFIXES
from gesture_core.interrupts import (
    a_local_peer,
    end_quietly_on_interrupt,
    interrupted_exit_code,
    restore_python_interrupts,
    terminate_as_interrupt,
)
from gesture_core.weights import WeightsUnavailableError, saved_format

EXIT_USAGE = 2
LOCAL_RANK_0_WAIT_S = 60.0  # how long a torchrun peer leaves a shared mistake for local rank 0 to say (let_local_rank_0_say_it)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default: "off" for switches, nothing where the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        nothing = action.default in (None, argparse.SUPPRESS) or action.default in ((), [])  # an empty list: none by default
        if "(default" in help_text or nothing or not action.option_strings:
            return help_text
        if action.nargs == 0 and action.default != action.const:  # a switch (store_true or store_false) not given
            return f"{help_text} (default: off)"
        return super()._get_help_string(action)


class DefaultsAndEpilogHelpFormatter(DefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``DefaultsHelpFormatter`` that prints the description and epilog as written (a tip's own lines)."""


class CommandParser(argparse.ArgumentParser):
    """Every command's parser. A mistake on its command line is one ``error:`` line and exit code 2,
    as a mistake found later is (``command``): argparse prints its whole usage first, 33 lines for
    ``training.finetune``, above a reason that is the one line that matters. ``--help`` shows every option's
    default (``DefaultsHelpFormatter``), and its usage names the Python that ran it (``python_command``).

    A flag is spelt whole (``allow_abbrev=False``): argparse took ``--epoch 3`` as ``--epochs 3``, and a
    script's abbreviation would stop working, or change meaning, the day a flag sharing its start is added.
    A misspelt or shortened flag is answered with the flags it is closest to."""

    def __init__(self, *args, prog: str | None = None, formatter_class: type[argparse.HelpFormatter] = DefaultsHelpFormatter, **kwargs) -> None:
        if prog and prog.startswith("python -m "):  # its usage and "--help lists every option" name the Python that ran
            prog = python_command() + prog.removeprefix("python")
        super().__init__(*args, prog=prog, formatter_class=formatter_class, allow_abbrev=False, **kwargs)
        self.given: list[str] = []  # the command line parsed last: what error() looks through for a misspelt flag

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        self.given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        if a_local_peer():  # torchrun's other processes on this machine parsed the same command: said once per machine
            let_local_rank_0_say_it()
        hint = f"; `{self.prog} --help` lists every option" if message.startswith(("unrecognized arguments", "the following arguments are required", "one of the arguments")) else ""
        self.exit(EXIT_USAGE, f"error: {' '.join(message.split())}{self.misspelt_flags(message)}{hint}\n")

    def misspelt_flags(self, message: str) -> str:
        """" (did you mean --epochs?)" for "--epoch": the flags that each unknown one begins, or else the nearest in
        spelling. Said beside any error, as a misspelt required flag is reported as missing, not as unknown."""
        # argparse keeps its table of flags private: they are read from the help's option lines (indented by two),
        # not from its help texts, where "every --every-th frame" offered a flag that does not exist
        invocations = re.findall(r"^  (-\S.*?)(?:  |$)", self.format_help(), flags=re.MULTILINE)
        known = sorted({flag for line in invocations for flag in re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", line)})
        unknown = [flag for flag in {token.split("=", 1)[0]: None for token in self.given} if flag.startswith("--") and flag not in known]
        names = {option[2:]: option for option in known}  # spelling compared without the "--" every flag shares
        guesses = []
        for flag in unknown:
            matches = [option for option in known if option.startswith(flag)] or [names[name] for name in difflib.get_close_matches(flag[2:], names, n=2, cutoff=0.6)]
            guesses += [option for option in matches[:3] if option not in guesses]
        if not guesses:
            return ""
        return f" (did you mean {' or '.join(guesses)}?)" if message.startswith("unrecognized") else f" ({', '.join(unknown)}: did you mean {' or '.join(guesses)}?)"


class OutOfMemory(RuntimeError):
    """The machine ran out of memory for what a command was asked to do; the message names the flag to lower."""


USER_ERRORS = (ValueError, OSError, WeightsUnavailableError, HandModelsUnavailableError, OutOfMemory)

P = ParamSpec("P")


def let_local_rank_0_say_it() -> None:
    """For a torchrun peer (``a_local_peer``) with a mistake that every process of its machine makes alike: wait for
    torchrun to stop this process, which it does once local rank 0 has said the mistake and failed. A peer that
    ended at once could fail first, and torchrun then stopped rank 0 before it had said anything (it was still
    importing): the user read "interrupted" and no reason. A peer still running after LOCAL_RANK_0_WAIT_S (rank 0
    did not fail alike) returns, to say its mistake itself."""
    time.sleep(LOCAL_RANK_0_WAIT_S)


def command(main: Callable[P, int]) -> Callable[P, int]:
    """``main``, with a user's mistake printed as one ``error:`` line and returned as exit code 2."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        warnings.formatwarning = one_line_warning
        if problem := file_names_encoding_problem():
            warnings.warn(problem, stacklevel=2)
        restore_python_interrupts()  # from here a step that keeps its work on Ctrl-C (a run saving last.pt) has its say
        process_command = is_process_command(main)
        if process_command:
            terminate_as_interrupt()
        try:
            code = main(*args, **kwargs)
        except USER_ERRORS as err:
            print(f"error: {describe(err)}", file=sys.stderr)
            code = EXIT_USAGE
        except KeyboardInterrupt:  # Ctrl-C while a model loads or warms up, where no step of the command has its own say
            if not a_local_peer():
                print("\ninterrupted", file=sys.stderr)
            code = interrupted_exit_code()
        if process_command:
            end_quietly_on_interrupt(code)
        return code

    return run


def is_process_command(main: Callable[..., int]) -> bool:
    """Whether ``main`` is what this process was started to run (``python -m COMMAND``), not a test or a library
    calling it: its module is ``__main__``, or its package's ``__main__`` runs it (``python -m service.webcam``
    runs ``service.webcam.demo.main``, whose stop signals were left to end it at once)."""
    if main.__module__ == "__main__":
        return True
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name == f"{main.__module__.rpartition('.')[0]}.__main__"


def one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """``warnings.formatwarning`` for a command: what a user reads, without the source line behind it."""
    return f"warning: {' '.join(str(message).split())}\n"


def file_names_encoding_problem() -> str | None:
    """Why file names other than plain ASCII ones would read wrong in this process, or None. Python reads
    file names in the locale's encoding unless it runs in UTF-8 mode (as it does by itself in the C locale):
    under a Latin-1 locale a class folder "ñ" trained as a class "Ã±" without a word, and under
    ``PYTHONUTF8=0 LC_ALL=C`` a run folder "é" failed as "'ascii' codec can't encode character"."""
    encoding = sys.getfilesystemencoding()
    if codecs.lookup(encoding).name == "utf-8":
        return None
    return (f"this Python reads and writes file names and text as {encoding} (its locale's encoding), not UTF-8, so a name "
            "with other letters reads as other letters or cannot be read: run it with PYTHONUTF8=1, or in a UTF-8 locale (LANG=C.UTF-8)")


def describe(err: BaseException) -> str:
    """The error's message on one line; an OSError as 'file: reason' rather than '[Errno 28] ...'."""
    if isinstance(err, UnicodeError) and (problem := file_names_encoding_problem()):  # what the codec said names no file
        found = err.object[err.start:err.end] if isinstance(err, UnicodeEncodeError | UnicodeDecodeError) else None
        text = f"a name or text holds {found!r}: {problem}" if found else problem
    elif isinstance(err, OSError) and type(err).__str__ is OSError.__str__ and err.strerror:
        text = f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def output_arg(kind: str, suffixes: tuple[str, ...] = (), replaces: tuple[str, ...] | None = None, *,
               check_writing: bool = True) -> Callable[[str], Path]:
    """An argparse type for a ``kind`` ("file" or "folder") the command will create: refused at once
    where a file or folder is in the way, or the file name has none of ``suffixes``, rather than when
    the first result is written (after the work, and with the operating system's words). An existing
    file is replaced only if its name ends in one of ``replaces`` (default: ``suffixes``; none: any
    name) and it is not a training checkpoint: ``check --json best.pt`` replaced a run's checkpoint
    with its report, and ``--jsonl`` a photo. ``~`` is the home folder, as where a shell expands it.
    ``check_writing``: whether it must be writable now (not for an output the command may never write,
    such as the webcam's snapshots, which only a key press takes)."""

    def output(text: str) -> Path:
        refuse_empty_path(text, f"a {kind} name")
        if text == "-":  # many tools' name for standard output: --jsonl - wrote a file named "-"
            raise argparse.ArgumentTypeError(f"- (standard output) is not taken here: pass a {kind} name")
        path = Path(text).expanduser()  # --out=~/run: no shell expands it, and a folder named "~" was made
        lands = landing(path)
        if kind == "file" and lands.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder: pass a file name")
        if kind == "file" and lands.is_file() and (problem := replacement_problem(lands, suffixes if replaces is None else replaces)):
            raise argparse.ArgumentTypeError(problem)
        if kind == "folder" and lands.exists() and not lands.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a file: pass a folder")
        if suffixes and path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(f"{text}: the file name must end in {' or '.join(suffixes)}")
        blocking = next((parent for parent in lands.parents if parent.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: {blocking} is a file, not a folder")
        if check_writing and (problem := write_problem(lands, kind)):  # evaluate --out /proc/x failed at its first write, after the evaluation
            raise argparse.ArgumentTypeError(f"{text}: {problem}")
        return lands if ".." in path.parts else path  # so every later check sees where it lands, as the user typed it otherwise

    return output


def python_command() -> str:
    """This interpreter as the user would type it, for the commands that messages give to paste: ``.venv/bin/python``
    under the current folder, ``python`` (or ``python3``) where that is this interpreter on PATH, else its full path.
    A bare "python -m ..." after ``.venv/bin/python -m ...`` was another Python, without torch."""
    exe = Path(sys.executable)
    for name in ("python", "python3"):
        found = shutil.which(name)
        if found and Path(found).absolute() == exe.absolute():
            return name
    try:
        relative = exe.absolute().relative_to(Path.cwd())
    except ValueError:
        return shlex.quote(str(exe))
    return shlex.quote(str(relative))


def first_free(base: Path, free: Callable[[Path], bool] = lambda path: not path.exists(), *, file: bool = False) -> Path:
    """``base``, or the first of base-2, base-3, ... that is ``free`` (by default: not there yet). A
    ``file`` keeps its suffix last (snapshot-000001-2.png); a folder's name takes the number at its end,
    dots and all (runs/flowers-v1.2-resnet18-2)."""
    candidate, n = base, 1
    while not free(candidate):
        n += 1
        candidate = base.with_name(f"{base.stem}-{n}{base.suffix}" if file else f"{base.name}-{n}")
    return candidate


def landing(path: Path) -> Path:
    """Where writing ``path`` lands once its missing folders are made: ``run/new/../best.pt`` is
    run/best.pt, which ``Path.exists`` called missing (new/ was), so the checkpoint it named was replaced."""
    return path.expanduser().resolve()


def replacement_problem(path: Path, replaces: tuple[str, ...]) -> str | None:
    """Why writing ``path`` would destroy a file the command did not write, or None."""
    if saved_format(path) == "torch.save":
        return f"{path} is a checkpoint (written by torch.save): writing here would replace it; pass another file name"
    if path.name in RUN_FILES and holds_a_run(path.parent):  # check --json RUN/split.json: evaluate and --resume then failed on it
        return f"{path} is a training run's {path.name}: writing here would replace it; pass another file name"
    if replaces and path.suffix.lower() not in replaces:
        return f"{path} exists and is not a {' or '.join(replaces)} file: writing here would replace it; pass another file name"
    return None


def refuse_empty_path(text: str, expected: str) -> None:
    """An ArgumentTypeError for an empty path: Path("") is the current folder, so "" passed for a
    file read as "a folder without best.pt", and for a folder wrote into the current one."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"empty path: pass {expected}")


def not_a_file(path: Path, what: str = "file") -> str:
    """Why ``path``, which is no regular file, cannot be read as one, to follow its name: ": no such file", or what it
    is instead (a named pipe was "no such file", and so was a link that loops, both of them there in ``ls``)."""
    if not os.path.lexists(path):
        return f": no such {what}"
    try:
        mode = path.stat().st_mode
    except OSError as err:  # a link to nothing, or one that loops (ELOOP)
        return f": a link that leads to no {what} ({err.strerror or err})"
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return f" is {next((name for is_kind, name in kinds if is_kind(mode)), 'not a regular file')}, not {'an' if what[0] in 'aeiou' else 'a'} {what}"


RUN_FILES = ("best.pt", "last.pt", "metrics.json", "config.json", "split.json", "history.csv")  # what training.finetune writes


def holds_a_run(folder: Path) -> bool:
    """Whether ``folder`` is a training run's folder: its config and a checkpoint or its split (a run stopped in its first epoch)."""
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in ("best.pt", "last.pt", "split.json"))


def check_output_spares_inputs(flag: str, out: Path, inputs: dict[str, Path | None]) -> None:
    """A ValueError when writing ``out`` would destroy what the command reads or what training wrote:
    one of ``inputs`` (flag -> path) itself, a run's checkpoint or metrics, or a run's own folder as a
    report folder (its metrics.json and plots would be replaced)."""
    lands = landing(out)
    for name, path in inputs.items():  # samefile: a hard link to the source is the source
        if path is not None and lands.exists() and path.exists() and lands.samefile(path):
            raise ValueError(f"{flag} {out} is the {name} it reads: pass another {flag}")
    folder = lands if lands.is_dir() else lands.parent
    if holds_a_run(folder) and (lands.is_dir() or lands.name in RUN_FILES):
        raise ValueError(f"{flag} {out} would replace a training run's {'files' if lands.is_dir() else lands.name} in {folder}: pass another {flag}")


def check_writable(flag: str, path: Path, kind: str = "file") -> None:
    """A ValueError naming ``flag`` when ``path`` (a "file" or a "folder") cannot be written, said before the
    work starts rather than at the first write, after it."""
    if problem := write_problem(path, kind):
        raise ValueError(f"{flag} {path}: {problem}")


def check_default_writable(what: str, folder: Path, flag: str = "--out") -> None:
    """``check_writable`` for an output the user did not name (a default folder), naming the flag that moves it."""
    if problem := write_problem(folder, "folder"):
        raise ValueError(f"{what} {folder}: {problem}; pass {flag} to write elsewhere")


def write_problem(path: Path, kind: str = "file") -> str | None:
    """Why ``path`` (a "file" or a "folder") cannot be written, or None. Nothing is left behind: an existing
    file is opened for appending (its bytes stay), otherwise a temporary file is made in the nearest existing folder."""
    try:
        if kind == "file" and path.is_file():
            path.open("ab").close()
        elif kind == "file" and path.exists():  # /dev/null and the like: not opened, as a pipe would wait for a reader
            if not os.access(path, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        else:
            folder = path if kind == "folder" else path.parent
            tempfile.TemporaryFile(dir=next(up for up in (folder, *folder.parents) if up.exists())).close()
    except OSError as err:
        return f"cannot write there: {err.strerror or err}"
    return None


def check_outputs_differ(outputs: dict[str, Path | None]) -> None:
    """A ValueError when two flags name one file: the annotated video held the JSON lines."""
    given = [(flag, path) for flag, path in outputs.items() if path is not None]
    for i, (flag, path) in enumerate(given):
        for other, other_path in given[i + 1 :]:
            if landing(path) == landing(other_path) or (path.exists() and other_path.exists() and path.samefile(other_path)):
                raise ValueError(f"{other} {other_path} is the {flag} file: pass another {other}")


def check_output_outside_datasets(flag: str, out: Path, datasets: Iterable[Path | None]) -> None:
    """A ValueError when ``out`` lies inside a dataset folder: a report written into a class folder
    was read by the next training run as photos of that class (its JSON replaced one in the probe)."""
    target = out.expanduser().resolve()
    for root in datasets:
        if root is not None and root.is_dir() and target.is_relative_to(root.expanduser().resolve()):
            raise ValueError(f"{flag} {out} is inside the dataset {root}, where training would read what it writes: pass another {flag}")


def photos_in(folder: Path, besides: Iterable[str] = ()) -> list[str]:
    """The names of the image files directly in ``folder`` (as training reads them), but ``besides``, sorted."""
    left_out = set(besides)
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in left_out and p.is_file())


def check_output_among_no_photos(flag: str, out: Path, writes: Iterable[str]) -> None:
    """A ValueError when the folder ``out``, or the folder it will be made in, holds photos the command did not
    write (``writes``: its own images' names): a class folder of some dataset, whose next training run or
    check reads what lands there as more of its photos (visualize --out DATA/fist wrote two PNGs into class
    fist; evaluate --out UNKNOWN/report made the next --unknown UNKNOWN count its plots). The current folder
    is passed over, a report folder made beside the photos in it being the user's plain choice, and so is a
    model's folder (a run's, or one holding a .pt checkpoint), whose PNGs are training's and calibration's
    plots (evaluate --out RUN/eval-again)."""
    folder = landing(out)
    folder = folder if folder.is_dir() else folder.parent
    if not folder.is_dir() or folder == Path.cwd().resolve() or holds_a_run(folder) or any(folder.glob("*.pt")):
        return
    if photos := photos_in(folder, besides=writes):
        raise ValueError(f"{flag} {out}: {folder} holds photos ({some_of(photos, 3)}): a class folder of a dataset? what is written "
                         f"there would be read as more of them; pass another {flag}")


def trained_on(train_config: dict) -> Path | None:
    """The dataset folder a model was trained on, from the run's config stored in its checkpoint, or None."""
    data = train_config.get("data")
    return Path(data) if isinstance(data, str) and data else None


def checkpoint_arg(in_run_folder: str) -> Callable[[str], Path]:
    """An argparse type for a checkpoint: a file, or a training run's folder, meaning its
    ``in_run_folder`` file (``best.pt`` to evaluate or serve, ``last.pt`` to resume), as people pass them."""

    def checkpoint(text: str) -> Path:
        refuse_empty_path(text, f"a checkpoint file or a run folder (RUN/{in_run_folder}, or RUN)")
        path = checkpoint_file(text, in_run_folder)
        if path.is_dir() and (path / "config.json").is_file():  # it was told to pass "a run folder written by training.finetune"
            raise argparse.ArgumentTypeError(f"{text} is a run stopped before its first epoch ended, so it has no {in_run_folder}: "
                                             "start it again with the command that began it")
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder without {in_run_folder}: pass a checkpoint file, "
                                             f"or a run folder written by training.finetune (RUN/{in_run_folder})")
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"{text}{not_a_file(path)}")
        if path.suffix.lower() == ".onnx":  # it was "not written by torch.save", which does not say what to pass
            raise argparse.ArgumentTypeError(f"{text} is an ONNX export (training.export writes them for other runtimes): "
                                             f"pass the run's checkpoint, RUN/{in_run_folder}, or the run folder RUN")
        return path

    return checkpoint
