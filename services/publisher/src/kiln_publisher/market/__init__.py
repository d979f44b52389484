"""The marketplace service: signed entries (kiln_market) describing images held
by the storage service, kept in NATS JetStream (shared by every publisher
replica), searched, deprecated, expired, and served as JSON and HTML.
See docs/marketplace.md."""

from kiln_publisher.market.http import make_app
from kiln_publisher.market.query import Query
from kiln_publisher.market.store import BUCKET, Market

__all__ = ["BUCKET", "Market", "Query", "make_app"]
