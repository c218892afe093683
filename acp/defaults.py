"""Every default and limit that the command line, the library and the docs share, in one
place (a module without imports, so ``acp --help`` reads it for free)."""

# Models: a hub id or a local folder each.
GLIGEN_MODEL = "masterful/gligen-1-4-generation-text-box"
CLIP_MODEL = "openai/clip-vit-large-patch14"
# Masks are made once per kept image, after K candidates of tens of steps each, so the largest
# SAM costs little of a run; the SAM paper reports ViT-H clearly better than ViT-B.
SAM_MODEL = "facebook/sam-vit-huge"
LLM_MODEL = "gpt-4o-mini"

# Rendering.
STEPS = 25
GUIDANCE = 7.5
BETA = 0.3  # GLIGEN's scheduled sampling: the share of steps that follow the boxes (its paper's)
CANDIDATES = 4
# The NSFW safety checker that GLIGEN checkpoints ship: off, for the reasons in
# docs/architecture.md (CLIS filters candidates anyway; not every model folder has one).
SAFETY_CHECKER = False
# SD schedulers train 1000 steps and skip the first (steps_offset 1): 1000 already fails.
MAX_STEPS = 999
# One plan's candidates are denoised in one batch (twice over with guidance): past this the
# batch no longer fits a GPU at 512 px, and more candidates add little to the best one's score.
MAX_CANDIDATES = 32

# CLIS thresholds, on the paper's 0-100 scale.
MIN_CLIS_L = 50.0
MIN_CLIS_I = 60.0
# The VLM judge is asked where CLIP-I is within this of the instance threshold, so many times
# a run at most.
JUDGE_MARGIN = 10.0
JUDGE_MAX_CALLS = 100

# Splits of `acp export yolo` / `coco-split`: shares of val and test; train is the rest.
VAL_FRACTION = 0.1
TEST_FRACTION = 0.0
# `acp report`: thumbnails sampled from a dataset of any size (the page never grows with it).
REPORT_CONTACT_SHEET = 48
REPORT_EXTREMES = 8  # lowest-scoring kept images, and as many best dropped candidates
REPORT_STRIP = 6  # examples per category
REPORT_STRIP_CATEGORIES = 40  # categories with an example strip
