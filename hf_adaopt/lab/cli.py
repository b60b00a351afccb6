"""The `hf-adaopt` command: `train`, `compare`, `suite`, `report` and `push` subcommands.

Each subcommand is a module's `main(argv)`; this file only dispatches, so that `hf-adaopt compare --help`
shows the subcommand's own arguments.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("hf_adaopt.lab.run", "train one task with one optimizer (like training_scripts/train.py)"),
    "compare": ("hf_adaopt.lab.compare", "multi-seed comparison of optimizers, with statistics and plots"),
    "suite": ("hf_adaopt.lab.suite", "the robustness suite: workloads x optimizers x initial lrs, offline"),
    "report": ("hf_adaopt.lab.report", "rebuild report.md, results.json and plots from a comparison or suite directory"),
    "push": ("hf_adaopt.lab.hub", "publish a run or a comparison to the Hugging Face Hub with its card"),
}


def _usage() -> str:
    lines = ["usage: hf-adaopt <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`hf-adaopt <command> --help` lists a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from hf_adaopt import __version__

        print(f"hf-adaopt {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"hf-adaopt: unknown command {command!r}; choose one of {', '.join(COMMANDS)}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
