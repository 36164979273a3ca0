"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, polled briskly.

kombu hands this transport's options to `create_engine`, so its polling interval (1 s by
default, too slow for interactive requests) is set on a subclass instead.
"""

from __future__ import annotations

from kombu.transport import sqlalchemy


class EmbeddedTransport(sqlalchemy.Transport):
    polling_interval = 0.02
