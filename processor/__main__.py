"""`python -m processor` is the same as the `flowhook` command."""

from processor.cli.main import main

if __name__ == "__main__":
    main()
