"""Image preprocessing as tensor operations on the models' device: crop, pad, resize and
normalise for CLIP (``acp.score.image``) and the detectors (``acp.score.detector``).

transformers' processors do this on the CPU with PIL or numpy, image by image: at 512 px and
K=4 that was most of the CPU a worker spent outside the models. Here an image rendered on the
device stays there (``RenderedCandidate.pixels``, uint8, read by CLIP and the detector alike),
an image read from a file is copied there once as bytes, and every step from the conversion to
float on is a torch operation there, each mirroring its processor's step:

- CLIP (``ClipPixels``): resize so the shortest side is ``size`` (PIL's bicubic, which torch's
  antialiased bicubic reproduces), centre crop, rounded to whole pixel levels as PIL's 8-bit
  output is, scaled and normalised. The CLIS-I crops are cut and padded to a square of CLIP's
  mean colour on the device too.
- OWLv2 (``OwlPixels``): padded to a square at the bottom and right with black,
  resized to the model's side linearly with scipy's border (downscaling blurs first with the
  Gaussian whose sigma is ``(factor - 1) / 2``, as ``Owlv2ImageProcessor`` does with scipy),
  normalised.
- Grounding DINO (``DinoPixels``): resized so the shortest side is 800 and the longest at most
  1333 (PIL's bilinear, rounded), normalised, padded with zeros to the batch's largest image,
  with the mask of real pixels.

Differences left (``tests/test_pixels.py`` measures them against each processor): PIL rounds
its first pass to 8 bits and uses fixed-point weights, so CLIP's and Grounding DINO's inputs
lie within a pixel level of the processor's on photo-like images (CLIP's bicubic up to ~10
levels at single pixels of random noise, whose overshoot PIL clamps between its passes; under
half a level on average), which moves CLIS-I by less than ``CLIS_TOLERANCE`` points. OWLv2's
are the processor's, to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from acp.errors import InputError

if TYPE_CHECKING:
    from typing import TypeAlias

    import torch
    from PIL.Image import Image

    # An image as the scorers take it: a PIL image, or a renderer's (3, H, W) uint8 tensor.
    Picture: TypeAlias = "Image | torch.Tensor"

# How far scores from these inputs may lie from scores of the processor's (tests check it).
CLIS_TOLERANCE = 0.5  # CLIS-I points (0-100)
BICUBIC, BILINEAR = 3, 2  # PIL's resampling filters, as processors name them


def _size(size: Any, key: str) -> int | None:
    """A side from a processor's ``size`` (a dict, or transformers' ``SizeDict``)."""
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value is not None else None


def image_size(picture: Picture) -> tuple[int, int]:
    """``(width, height)`` of a PIL image or a ``(3, H, W)`` tensor of pixels."""
    if hasattr(picture, "shape"):
        _, height, width = picture.shape
        return int(width), int(height)
    width, height = picture.size
    return int(width), int(height)


def to_device(images: Sequence[Picture], device: Any) -> list[torch.Tensor]:
    """Each image as a ``(3, H, W)`` uint8 tensor of pixel levels on ``device``: a PIL image is
    copied there as bytes; a tensor (a renderer's decoded image, already on the device) is used
    as it is. The conversion to float is the models' preprocessing's (``ClipPixels`` and the
    others), so on an accelerator it runs there."""
    import numpy as np
    import torch

    tensors = []
    for image in images:
        if isinstance(image, torch.Tensor):
            if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"expected a (3, H, W) uint8 image tensor, got {image.dtype} "
                                 f"{tuple(image.shape)}")
            tensors.append(image.to(device, non_blocking=True))
            continue
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        data = torch.from_numpy(np.array(rgb)).to(device, non_blocking=True)
        tensors.append(data.permute(2, 0, 1))
    return tensors


def _resize(pixels: torch.Tensor, height: int, width: int, mode: str, levels: bool) -> torch.Tensor:
    """``(C, H, W)`` resized with PIL's filter ``mode`` (torch's antialiased kernels follow PIL's);
    ``levels``: rounded to whole pixel levels, as PIL's 8-bit output is."""
    import torch.nn.functional as F

    pixels = pixels.float()
    if pixels.shape[-2:] != (height, width):
        pixels = F.interpolate(pixels[None], size=(height, width), mode=mode, align_corners=False,
                               antialias=True)[0]
    return pixels.round().clamp(0, 255) if levels else pixels


def _normalise(batch: torch.Tensor, scale: float, mean: Sequence[float], std: Sequence[float]
               ) -> torch.Tensor:
    """``(batch * scale - mean) / std`` per channel, in place (``batch`` is the caller's own
    fresh tensor): one buffer of the batch's size instead of three."""
    import torch

    shape = (1, -1, 1, 1)
    mean_t = torch.tensor(mean, device=batch.device, dtype=batch.dtype).view(shape)
    std_t = torch.tensor(std, device=batch.device, dtype=batch.dtype).view(shape)
    return batch.mul_(scale).sub_(mean_t).div_(std_t)


def _common(processor: Any, what: str, option: str) -> tuple[float, tuple[float, ...], tuple[float, ...]]:
    """The rescale factor, mean and standard deviation of an image processor."""
    if getattr(processor, "do_normalize", True) is False or getattr(processor, "do_rescale", True) is False:
        raise InputError(f"{option}: its {what} image processor does not rescale and normalise; acp "
                         "preprocesses on the device as the released models do")
    scale = float(getattr(processor, "rescale_factor", 1 / 255))
    return scale, tuple(processor.image_mean), tuple(processor.image_std)


@dataclass(frozen=True)
class ClipPixels:
    """CLIP's preprocessing read from its image processor (``from_processor``)."""

    shortest_edge: int | None  # resize so the shorter side is this, or to (height, width)
    height: int
    width: int
    crop: tuple[int, int] | None  # (height, width) of the centre crop
    mode: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_processor(cls, processor: Any, option: str = "--clip-model") -> ClipPixels:
        images = getattr(processor, "image_processor", processor)
        scale, mean, std = _common(images, "CLIP", option)
        size = images.size
        shortest = _size(size, "shortest_edge")
        height, width = _size(size, "height"), _size(size, "width")
        if shortest is None and (height is None or width is None):
            raise InputError(f"{option}: its image processor's size {size!r} is neither a shortest edge "
                             "nor a height and width")
        crop = None
        if getattr(images, "do_center_crop", False):
            crop_size = images.crop_size
            crop = (int(_size(crop_size, "height") or 0), int(_size(crop_size, "width") or 0))
        resample = int(getattr(images, "resample", BICUBIC))
        mode = {BICUBIC: "bicubic", BILINEAR: "bilinear"}.get(resample)
        if mode is None:
            raise InputError(f"{option}: its image processor resamples with PIL filter {resample}; acp "
                             "reproduces bicubic and bilinear")
        return cls(shortest, height or 0, width or 0, crop, mode, scale, mean, std)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The resized size, as transformers' ``get_resize_output_image_size`` computes it."""
        if self.shortest_edge is None:
            return self.height, self.width
        short, long = (height, width) if height <= width else (width, height)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)

    def one(self, pixels: torch.Tensor) -> torch.Tensor:
        """One ``(3, H, W)`` image of pixel levels, resized and cropped, not yet normalised."""
        height, width = self.output_size(*pixels.shape[-2:])
        pixels = _resize(pixels, height, width, self.mode, levels=True)
        if self.crop is not None:
            crop_h, crop_w = self.crop
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
            if top < 0 or left < 0:  # a crop larger than the image is padded with zeros, as PIL's
                import torch.nn.functional as F

                pad_h, pad_w = max(-top, 0), max(-left, 0)
                pixels = F.pad(pixels, (pad_w, crop_w - width - pad_w, pad_h, crop_h - height - pad_h))
                top, left = max(top, 0), max(left, 0)
            pixels = pixels[:, top:top + crop_h, left:left + crop_w]
        return pixels

    def batch(self, images: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        import torch

        stacked = torch.stack([self.one(p) for p in images])
        return _normalise(stacked, self.scale, self.mean, self.std).to(dtype)


def square(pixels: torch.Tensor, colour: Sequence[float]) -> torch.Tensor:
    """``(3, h, w)`` centred on a square of ``colour`` (as ``acp.score.image.square_pad``)."""
    import torch

    _, height, width = pixels.shape
    side = max(height, width)
    if height == width:
        return pixels
    fill = torch.tensor(colour, device=pixels.device, dtype=pixels.dtype)
    canvas = fill.view(3, 1, 1).expand(3, side, side).clone()
    top, left = (side - height) // 2, (side - width) // 2
    canvas[:, top:top + height, left:left + width] = pixels
    return canvas


@dataclass(frozen=True)
class OwlPixels:
    """OWLv2 preprocessing: ``side`` is the model's square input."""

    side: int
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_processor(cls, processor: Any, option: str = "--detector-model") -> OwlPixels:
        images = getattr(processor, "image_processor", processor)
        scale, mean, std = _common(images, "OWL", option)
        height, width = _size(images.size, "height"), _size(images.size, "width")
        if height is None or height != width:
            raise InputError(f"{option}: expected a square input size, got {images.size!r}")
        return cls(height, scale, mean, std)

    def one(self, pixels: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        _, height, width = pixels.shape
        side = max(height, width)
        # black at the bottom and right
        pixels = F.pad(pixels.float() * self.scale, (0, side - width, 0, side - height))
        factor = side / self.side
        if factor > 1:  # downscaling: the processor's Gaussian first
            pixels = _gaussian(pixels, (factor - 1) / 2)
        if side != self.side:
            pixels = _zoom(_zoom(pixels, 2, self.side), 1, self.side)
        return pixels

    def batch(self, images: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        import torch

        return _normalise(torch.stack([self.one(p) for p in images]), 1.0, self.mean, self.std).to(dtype)

    def scale_of(self, height: int, width: int) -> tuple[float, float]:
        """Pixels per unit of a predicted box's x and y (boxes are relative to the padded square)."""
        side = float(max(height, width))
        return side, side


def _zoom(pixels: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``pixels`` resized along ``dim`` to ``size`` linearly, as scipy's ``zoom`` (order 1,
    ``grid_mode``) does: pixel centres aligned, and samples beyond the border mirrored into the
    image (torch's bilinear holds the edge pixel instead, which upscaling to OWLv2's 960 px side
    would give its top row and left column)."""
    import torch

    length = pixels.shape[dim]
    source = (torch.arange(size, device=pixels.device, dtype=torch.float64) + 0.5) * (length / size) - 0.5
    source = source.abs()  # mirrored at the first pixel's centre
    last = float(length - 1)
    source = torch.where(source > last, 2 * last - source, source).clamp(0, last)  # and at the last
    low = source.floor().long()
    high = (low + 1).clamp(max=length - 1)
    weight = (source - low).to(pixels.dtype).view([-1 if d == dim else 1 for d in range(pixels.dim())])
    return pixels.index_select(dim, low) * (1 - weight) + pixels.index_select(dim, high) * weight


def _gaussian(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """scipy's ``gaussian_filter`` (truncated at 4 sigma, mirrored at the border) over H and W."""
    import torch
    import torch.nn.functional as F

    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=pixels.device, dtype=pixels.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = pixels.shape[0]
    out = pixels[None]
    for dim in (3, 2):  # width, then height
        size = out.shape[dim]
        pad = min(radius, size - 1)  # reflect padding needs pad < size
        shape = (1, 1, 1, 2 * radius + 1) if dim == 3 else (1, 1, 2 * radius + 1, 1)
        weights = kernel.view(shape).expand(channels, -1, -1, -1)
        if pad < radius:  # a side shorter than the kernel: repeat the mirror by hand
            index = torch.arange(-radius, size + radius, device=pixels.device)
            period = 2 * (size - 1) if size > 1 else 1
            index = index.remainder(period)
            index = torch.where(index >= size, period - index, index)
            out = out.index_select(dim, index)
        else:
            padding = (radius, radius, 0, 0) if dim == 3 else (0, 0, radius, radius)
            out = F.pad(out, padding, mode="reflect")
        out = F.conv2d(out, weights, groups=channels)
    return out[0]


@dataclass(frozen=True)
class DinoPixels:
    """Grounding DINO's preprocessing: shortest side ``shortest``, longest at most ``longest``."""

    shortest: int
    longest: int | None
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_processor(cls, processor: Any, option: str = "--detector-model") -> DinoPixels:
        images = getattr(processor, "image_processor", processor)
        scale, mean, std = _common(images, "Grounding DINO", option)
        shortest, longest = _size(images.size, "shortest_edge"), _size(images.size, "longest_edge")
        if shortest is None:
            raise InputError(f"{option}: expected a shortest-edge input size, got {images.size!r}")
        return cls(shortest, longest, scale, mean, std)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """transformers' ``get_size_with_aspect_ratio``."""
        size, raw = self.shortest, None
        if self.longest is not None:
            small, large = float(min(height, width)), float(max(height, width))
            if large / small * size > self.longest:
                raw = self.longest * small / large
                size = round(raw)
        if (height <= width and height == size) or (width <= height and width == size):
            return height, width
        if width < height:
            return (int(raw * height / width) if raw is not None else int(size * height / width)), size
        return size, (int(raw * width / height) if raw is not None else int(size * width / height))

    def batch(self, images: Sequence[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised batch, zero-padded at the bottom and right to its largest image, and
        its mask of real pixels."""
        import torch

        resized = [_resize(p, *self.output_size(*p.shape[-2:]), "bilinear", levels=True) for p in images]
        height = max(p.shape[1] for p in resized)
        width = max(p.shape[2] for p in resized)
        device = resized[0].device
        batch = torch.zeros(len(resized), 3, height, width, device=device)
        mask = torch.zeros(len(resized), height, width, device=device, dtype=torch.long)
        normalised = [_normalise(p[None], self.scale, self.mean, self.std)[0] for p in resized]
        for k, p in enumerate(normalised):
            batch[k, :, : p.shape[1], : p.shape[2]] = p
            mask[k, : p.shape[1], : p.shape[2]] = 1
        return batch.to(dtype), mask
