"""Consumers left behind: image consumers of a key whose image never became (or is no longer)
an active image.

A consumer keeps its key alive: Barbican refuses to delete a secret that has one. When an
import dies half-way (the Glance worker killed, the key manager unreachable while a rollback
ran), the image that registered itself stays a consumer although it holds no data that needs
the key. :func:`audit_consumers` asks the image service about every image consumer of the
keys it is given; :func:`clear_stale` removes the stale ones.

An image is stale when the image service no longer knows it, when it is ``queued`` (no data),
``killed``, ``deleted`` or ``pending_delete``, or when it has been ``saving``, ``uploading``
or ``importing`` for longer than ``min_age`` seconds (default one hour: Glance's own import
lock lasts 60 minutes, so a younger import may still be running). ``active`` and
``deactivated`` images hold data and are never stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from imgcrypt.keys.consumers import IMAGE_CONSUMER_SERVICE, IMAGE_CONSUMER_TYPE
from imgcrypt.keys.manager import Consumer, KeyManager
from imgcrypt.keys.rules import consumers_of

DEFAULT_MIN_AGE = 3600.0
GONE = "gone"  # the image service has no such image (or hides it from this user)
# Statuses whose image holds the data its key opens.
HOLDING = frozenset({"active", "deactivated"})
# Statuses of an upload or import that may still be running.
IN_FLIGHT = frozenset({"saving", "uploading", "importing"})


@dataclass(frozen=True)
class ImageState:
    status: str  # Glance's status, or GONE
    updated_at: datetime | None


@dataclass(frozen=True)
class ConsumerState:
    key_id: str
    consumer: Consumer
    image: ImageState | None  # None: not an image consumer
    stale: bool

    def as_dict(self) -> dict[str, str | bool | None]:
        return {"key_id": self.key_id, **self.consumer.as_dict(),
                "image_status": self.image.status if self.image is not None else None,
                "stale": self.stale}


def is_stale(image: ImageState, *, now: datetime, min_age: float) -> bool:
    if image.status in HOLDING:
        return False
    if image.status in IN_FLIGHT:
        if image.updated_at is None:
            return False
        return (now - image.updated_at).total_seconds() >= min_age
    return True


def parse_time(value: object) -> datetime | None:
    """Glance's ``updated_at`` (``2026-12-07T21:00:00Z``), or None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def audit_consumers(manager: KeyManager, key_ids: Iterable[str],
                    image_state: Callable[[str], ImageState], *, min_age: float,
                    now: datetime | None = None) -> list[ConsumerState]:
    """Every consumer of ``key_ids``, with its image's state where it is an image."""
    now = now or datetime.now(UTC)
    states = []
    for key_id in key_ids:
        for consumer in consumers_of(manager, key_id):
            if (consumer.service, consumer.resource_type) != (IMAGE_CONSUMER_SERVICE,
                                                               IMAGE_CONSUMER_TYPE):
                states.append(ConsumerState(key_id, consumer, None, False))
                continue
            image = image_state(consumer.resource_id)
            states.append(ConsumerState(key_id, consumer, image,
                                        is_stale(image, now=now, min_age=min_age)))
    return states


def clear_stale(manager: KeyManager, states: Iterable[ConsumerState]) -> list[ConsumerState]:
    """Remove every stale consumer in ``states``; the ones removed."""
    cleared = []
    for state in states:
        if state.stale:
            manager.remove_consumer(state.key_id, state.consumer)
            cleared.append(state)
    return cleared


__all__ = ["DEFAULT_MIN_AGE", "GONE", "ConsumerState", "ImageState", "audit_consumers",
           "clear_stale", "is_stale", "parse_time"]
