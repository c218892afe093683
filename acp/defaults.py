"""Every default and limit that the command line, the library and the docs share, in one
place (a module without imports, so ``acp --help`` reads it for free)."""

# Models: a hub id or a local folder each.
GLIGEN_MODEL = "masterful/gligen-1-4-generation-text-box"
CLIP_MODEL = "openai/clip-vit-large-patch14"
# Masks are made once per kept image, after K candidates of tens of steps each, so the largest
# SAM costs little of a run; the SAM paper reports ViT-H clearly better than ViT-B.
SAM_MODEL = "facebook/sam-vit-huge"
LLM_MODEL = "gpt-4o-mini"

# Planning. The LLM: requests in flight, seconds for one request, re-asks after an invalid reply.
LLM_CONCURRENCY = 8
LLM_TIMEOUT = 120.0
LLM_MAX_REASKS = 2
OBJECTS_PER_SCENE = (1, 3)  # concepts per sampled scene: min, max
MAX_OVERLAP = 0.7  # the largest IoU allowed between two objects of a plan
IMAGE_SIZE = 512

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
# Plans denoised together (``--batch-plans``): B plans x K candidates in one loop. 1 until
# measured on a GPU (bench/bench_gpu.py); on CPU samples run one at a time either way.
BATCH_PLANS = 1
MAX_BATCH_PLANS = 64

# CLIS thresholds, on a 0-100 scale. CLIS-L v2 is the share of real layouts less plausible
# (real ones average ~50): 10 keeps ~90 % of real NSR-1K layouts and 3-29 % of corrupted ones
# (bench/bench_clis_quality.py; docs/architecture.md). The paper's method used 50.
CLIS_L_METHOD = "v3"
MIN_CLIS_L = 10.0
MIN_CLIS_I = 60.0
# Output images of `acp generate`: jpeg (quality 95) or png.
IMAGE_FORMAT = "jpeg"
# The VLM judge is asked where CLIP-I is within this of the instance threshold, so many times
# a run at most.
JUDGE_MARGIN = 10.0
JUDGE_MAX_CALLS = 100
# The verifier (acp.score.verify): the detector, the IoU at which a detection verifies a box
# (COCO's match), and what a confident detection no label covers does to its candidate.
DETECTOR_MODEL = "google/owlv2-base-patch16-ensemble"
VERIFY_IOU = 0.5
UNPLANNED = "drop"

# Long-tail top-up (acp.balance): a class with no quota left gains at most this share of its
# real instances as companions of other classes' scenes, so the head is not inflated.
BALANCE_COMPANION_CAP = 0.1
# Splits of `acp export yolo` / `coco-split`: shares of val and test; train is the rest.
VAL_FRACTION = 0.1
TEST_FRACTION = 0.0
# `acp report`: thumbnails sampled from a dataset of any size (the page never grows with it).
REPORT_CONTACT_SHEET = 48
REPORT_EXTREMES = 8  # lowest-scoring kept images, and as many best dropped candidates
REPORT_STRIP = 6  # examples per category
REPORT_STRIP_CATEGORIES = 40  # categories with an example strip
