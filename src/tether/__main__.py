"""`python -m tether ...` runs the same CLI as the `tether` command."""

from tether.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
