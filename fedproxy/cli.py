"""Command line: argument parsing only; the work is in runtime and the modules it wires."""


def main(argv=None) -> int:  # replaced below
    return 0
