"""Reading image files that acp did not make, with a bound on their size.

An image header states the width and height; a PNG of 70 bytes can claim 100000 x 100000
pixels. PIL refuses twice its ``MAX_IMAGE_PIXELS`` with an exception of its own and only warns
below that, then allocates the whole image to decode it. ``read_rgb`` checks the claimed size
against ``MAX_PIXELS`` before decoding and turns every way a file can fail into a reason, so a
caller lists the file as bad and goes on.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image

# PIL's own default MAX_IMAGE_PIXELS (0.25 GiB of 24-bit pixels, about 9459 x 9459): far above
# any image a detector trains on, and a fixed value, whatever another library sets PIL's to.
MAX_PIXELS = 89_478_485


def read_rgb(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[Image | None, str | None]:
    """``(image, None)`` with the file decoded as RGB, or ``(None, reason)``."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # The size is checked below, against our limit; PIL's warning would only be noise.
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(path) as handle:
                width, height = handle.size
                if width * height > max_pixels:
                    return None, (f"the image is too large to decode ({width}x{height} pixels; "
                                  f"at most {max_pixels} are read)")
                handle.load()
                return handle.convert("RGB"), None
    except FileNotFoundError:
        return None, "image file not found"
    except PILImage.DecompressionBombError as error:  # PIL's own check, in open()
        return None, f"the image is too large to decode ({error})"
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return None, f"cannot decode the image ({error})"
