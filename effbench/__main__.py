"""`python -m effbench` runs the command line (also under torchrun)."""

from effbench.cli import main

main()
