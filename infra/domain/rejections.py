"""Why an upload is not an image the service accepts: every rejection is an ImageRejected,
whose str() is a readable message for the user, and whose `reason` is a stable code."""
from __future__ import annotations


class ImageRejected(Exception):
    """Base class: the bytes are not an image we accept.  str() is user-facing."""

    reason = "rejected"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class EmptyImage(ImageRejected):
    """Zero bytes (or only whitespace)."""

    reason = "empty"


class UnsupportedFormat(ImageRejected):
    """Magic bytes match none of SUPPORTED_FORMATS (text, PDF, HEIC, ...)."""

    reason = "unsupported_format"


class CorruptImage(ImageRejected):
    """Recognised format but the header/data is invalid or cannot be decoded."""

    reason = "corrupt"


class TruncatedImage(CorruptImage):
    """The file ends before the image data does (no JPEG EOI, no PNG IEND, ...)."""

    reason = "truncated"


class TooManyPixels(ImageRejected):
    """Header dimensions exceed the pixel limit; nothing was decoded."""

    reason = "too_many_pixels"

    def __init__(self, message: str, width: int = 0, height: int = 0, limit: int = 0):
        super().__init__(message)
        self.width, self.height, self.limit = width, height, limit
