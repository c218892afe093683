"""Reading image files that acp did not make, with a bound on their size.

An image header states the width and height; a PNG of 70 bytes can claim 100000 x 100000
pixels. PIL refuses twice its ``MAX_IMAGE_PIXELS`` with an exception of its own and only warns
below that, then allocates the whole image to decode it. ``read_rgb`` checks the claimed size
against ``MAX_PIXELS`` before decoding and turns every way a file can fail into a reason, so a
caller lists the file as bad and goes on. Only a regular file is opened (``acp.paths``): a FIFO
named like an image would block the reader forever.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from acp.paths import NotRegularFileError, open_regular

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
            with open_regular(path) as raw, PILImage.open(raw) as handle:
                width, height = handle.size
                if width * height > max_pixels:
                    return None, (f"the image is too large to decode ({width}x{height} pixels; "
                                  f"at most {max_pixels} are read)")
                handle.load()
                return handle.convert("RGB"), None
    except FileNotFoundError:
        return None, "image file not found"
    except (NotRegularFileError, IsADirectoryError) as error:
        return None, f"not an image file ({error.strerror or error})"
    except PILImage.DecompressionBombError as error:  # PIL's own check, in open()
        return None, f"the image is too large to decode ({error})"
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return None, f"cannot decode the image ({error})"


def image_size(path: Path) -> tuple[int, int]:
    """The width and height an image file's header states (no pixel is decoded). Raises
    ``OSError`` (a FIFO or device too: ``acp.paths.NotRegularFileError``) or PIL's
    ``UnidentifiedImageError``."""
    from PIL import Image as PILImage

    with open_regular(path) as raw, PILImage.open(raw) as handle:
        return handle.size
