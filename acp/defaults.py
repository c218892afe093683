"""Limits shared by the command line and the library (a module without imports, so that
``acp --help`` can read it for free)."""

# One plan's candidates are denoised in one batch (twice over with guidance): past this the
# batch no longer fits a GPU at 512 px, and more candidates add little to the best one's score.
MAX_CANDIDATES = 32
