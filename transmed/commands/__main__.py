"""`python -m transmed.commands` is the `transmed` console script."""

from transmed.commands import main

if __name__ == "__main__":
    main()
