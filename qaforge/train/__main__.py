"""`python -m qaforge.train ...` (also what `torchrun -m qaforge.train` runs under DDP)."""

from qaforge.train.command import main

main()
