"""``python -m searchskip``: the same command line as the ``searchskip`` script."""

from searchskip.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
