"""Allow ``python -m segtool``."""

from segtool.cli import main

if __name__ == "__main__":
    main()
