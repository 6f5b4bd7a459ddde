"""After the model: the mask post-processed, the edges refined, the cut-out cropped and put on a
background, as a task's options ask (infra/domain/options.py).

The steps are rembg's, so its users get what they know: its post-processed mask (an opening
with a 3x3 cross, a Gaussian blur of sigma 2, a threshold at 127), and alpha matting and
foreground estimation with pymatting, the library rembg uses.  Matting costs far more than
the model, so it is bounded by `outputs.refine_max_pixels`, and a process refines one image at
a time: matting holds about 0.5 GB per megapixel (tests/bench/outputs.py).
"""
from __future__ import annotations

import threading

import numpy as np

from maskflow.infra.domain.images import cv2  # the module that sets OpenCV's pixel cap first
from maskflow.infra.domain.options import Options
from maskflow.infra.domain.rejections import ImageRejected

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
_ONE_AT_A_TIME = threading.Lock()  # a worker's threads share its memory limit


class TooLargeToRefine(ImageRejected):
    """Matting or foreground estimation was asked of more pixels than the limit allows."""

    reason = "too_large_to_refine"


def finish(rgb: np.ndarray, mask: np.ndarray, options: Options, max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """(colours, alpha) of the cut-out; the alpha is also what masks/ keeps."""
    if options.post_process:
        mask = post_process(mask)
    if options.refine == "none":
        return rgb, mask
    pixels = rgb.shape[0] * rgb.shape[1]
    if pixels > max_pixels:
        raise TooLargeToRefine(f"refine={options.refine} is limited to {max_pixels} pixels "
                               f"(outputs.refine_max_pixels); this image has {pixels}")
    with _ONE_AT_A_TIME:
        if options.refine == "matting":
            try:
                return matting(rgb, mask, options.matting_foreground, options.matting_background,
                               options.matting_erode)
            except ValueError:  # no unknown region to solve for: what rembg falls back to
                pass
        return foreground(rgb, mask), mask


def post_process(mask: np.ndarray) -> np.ndarray:
    """rembg's post_process_mask: smooth the boundary, then make it hard."""
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _CROSS)
    # scipy's gaussian_filter(sigma=2) as rembg calls it: a radius of 4 sigmas, mirrored edges
    blurred = cv2.GaussianBlur(opened.astype(np.float64), (17, 17), 2, borderType=cv2.BORDER_REFLECT)
    return np.where(blurred < 127, 0, 255).astype(np.uint8)


def matting(rgb: np.ndarray, mask: np.ndarray, fg_threshold: int, bg_threshold: int,
            erode: int) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form alpha matting from a trimap of the mask, and the foreground colours under it."""
    from pymatting.alpha.estimate_alpha_cf import estimate_alpha_cf  # numba: only if asked
    from scipy.ndimage import binary_erosion

    structure = np.ones((erode, erode), np.uint8) if erode > 0 else None
    certain_fg = binary_erosion(mask > fg_threshold, structure=structure)
    certain_bg = binary_erosion(mask < bg_threshold, structure=structure, border_value=1)
    trimap = np.full(mask.shape, 0.5)
    trimap[certain_fg], trimap[certain_bg] = 1.0, 0.0
    alpha = estimate_alpha_cf(rgb / 255.0, trimap)
    return _colours(rgb / 255.0, alpha), _bytes(alpha)


def foreground(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The foreground colours under a soft mask: no old background fringing its edges."""
    return _colours(rgb / 255.0, mask / 255.0)


def _colours(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    from pymatting.foreground.estimate_foreground_ml import estimate_foreground_ml  # numba: only if asked

    return _bytes(estimate_foreground_ml(image, alpha))


def _bytes(values: np.ndarray) -> np.ndarray:
    return np.clip(values * 255, 0, 255).astype(np.uint8)
