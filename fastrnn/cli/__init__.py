"""The `fastrnn` command (also `python -m fastrnn`): one module per subcommand.

    fastrnn bench [--cell lstm gru rnn] [--shapes quick|grid|deepbench|all|deepbench-full] [--threads 1 2]
                  [--repeat N] [--budget S] [--json out.json] [--png out.png] [--no-peers]
    fastrnn info

A command is a module of this package, named like the command, with

    add_parser(subparsers)   adds its argparse subparser (subparsers.add_parser("<name>", ...)) and options
    run(args) -> int         runs it on the parsed arguments; the exit status

and its name in COMMANDS (the order of `fastrnn --help`).  A command module imports what it needs inside
run(), so that `fastrnn --help` and the other commands do not pay for it.
"""
import argparse
import importlib
import sys

COMMANDS = (
    "demo",
    "bench",
    "info",
)


def _command_modules():
    return {name: importlib.import_module(f"{__name__}.{name}") for name in COMMANDS}


def build_parser(modules=None):
    """The argparse parser of `fastrnn`, with one subparser per command module."""
    modules = _command_modules() if modules is None else modules
    p = argparse.ArgumentParser(prog="fastrnn", description="fastrnn: fast CPU RNN/LSTM/GRU kernels.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for mod in modules.values():
        mod.add_parser(sub)
    return p


def main(argv=None):
    """Run `fastrnn` on argv (default: sys.argv[1:]); returns the exit status."""
    modules = _command_modules()
    p = build_parser(modules)
    args = p.parse_args(argv)
    if args.version:
        from .. import __version__
        print(f"fastrnn {__version__}")
        return 0
    if args.command is None:
        p.print_help()
        return 0
    return modules[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
