"""`python -m bench <name>`: run one benchmark, print its table, append it to docs/benchmarks.md."""

import argparse
import sys

from bench import fleet, gateway, node, soak

BENCHES = {"node": node, "gateway": gateway, "fleet": fleet, "soak": soak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, module in BENCHES.items():
        module.add_arguments(sub.add_parser(name, help=module.__doc__))
    args = parser.parse_args(argv)
    return BENCHES[args.bench].run(args, argv=sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
