"""`python -m qaforge ...`: the same command as `qaforge ...`."""
from qaforge.cli import main

if __name__ == "__main__":
    main()
