"""`python -m effbench` runs the command line (also under torchrun)."""

from effbench.launch import main

main()
