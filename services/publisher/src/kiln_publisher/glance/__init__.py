"""Publishing images to OpenStack Glance, transport-free (the gRPC service wraps it).

Interoperable image import where the cloud enables it (web-download from
storage's URL, else glance-direct staged from the stream), the legacy upload
only where import is disabled; the result verified against Glance's SHA-512;
idempotent per artifact; rotation of older images of the same name."""

from kiln_publisher.glance.model import GlanceImage, GlanceTarget, ImageSource
from kiln_publisher.glance.publisher import GlancePublisher

__all__ = ["GlanceImage", "GlancePublisher", "GlanceTarget", "ImageSource"]
