"""The key lifecycle in one place: obtain a key, use it, register who uses it, or undo it all.

Every job that writes or admits an encrypted image does the same five steps: order a new key
in the key manager (or take an existing one), derive the LUKS passphrase from it, do the work,
register the image as the key's consumer, and roll back when anything fails. A
:class:`KeyLease` does them, in that order::

    with KeyLease.new(manager, KeyOrder()) as lease:
        lease.consume_as(file_consumer("disk.luks"))
        encrypt(..., lease.passphrase)
    # the key exists and lists disk.luks as its consumer; or, on failure, it is gone

The consumer is registered only when the block has succeeded, so a failed job never leaves a
key held by an image that does not exist. A rollback that fails itself (the key manager went
away between creating the key and deleting it) is not swallowed: what it left behind is
recorded in :attr:`KeyLease.leftovers` and added as a note to the exception that is raised,
so the caller can tell the person which key to delete by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

from imgcrypt.errors import UsageError
from imgcrypt.keys.manager import Consumer, KeyManager, KeyOrder
from imgcrypt.keys.rules import passphrase_for
from imgcrypt.keys.secret import Secret

#: The prefix of an exception note that names something a failed rollback left behind.
LEFTOVER_NOTE = "left behind:"


@dataclass(frozen=True)
class Leftover:
    """Something a rollback could not undo, and why."""

    key_id: str
    consumer: Consumer | None  # None: the key itself was to be deleted
    error: str

    def __str__(self) -> str:
        if self.consumer is None:
            return (f"{LEFTOVER_NOTE} key {self.key_id}, created for this run, could not be "
                    f"deleted ({self.error}); delete it once nothing uses it")
        who = f"{self.consumer.service}/{self.consumer.resource_type}/{self.consumer.resource_id}"
        return (f"{LEFTOVER_NOTE} consumer {who} of key {self.key_id} could not be removed "
                f"({self.error})")


class KeyLease:
    """A key held for one job: created (or stored) for it, or an existing one.

    Use :meth:`new`, :meth:`stored` or :meth:`existing`, then ``with lease:`` around the work.
    Leaving the block by an exception deletes a key the lease created and removes a consumer
    it registered; leaving it normally registers the consumer named by :meth:`consume_as`.
    """

    def __init__(self, manager: KeyManager, key_id: str, *, created: bool,
                 secret: Secret | None = None) -> None:
        self.manager = manager
        self.key_id = key_id
        self.created = created
        self._secret = secret
        self._pending: Consumer | None = None
        self.registered: Consumer | None = None
        self.leftovers: tuple[Leftover, ...] = ()
        self.rolled_back = False

    def __repr__(self) -> str:  # never the secret
        return (f"KeyLease(key_id={self.key_id!r}, manager={self.manager.name!r}, "
                f"created={self.created})")

    @classmethod
    def new(cls, manager: KeyManager, order: KeyOrder) -> KeyLease:
        """A key ordered from ``manager`` now, deleted again if the job fails."""
        return cls(manager, manager.create_key(order), created=True)

    @classmethod
    def stored(cls, manager: KeyManager, secret: Secret) -> KeyLease:
        """``secret`` stored in ``manager`` now (a clone of another key, say), deleted again if
        the job fails."""
        return cls(manager, manager.store(secret), created=True)

    @classmethod
    def existing(cls, manager: KeyManager, key_id: str) -> KeyLease:
        """A key that exists already: the lease never deletes it."""
        return cls(manager, key_id, created=False)

    @property
    def secret(self) -> Secret:
        """The key's secret, read from the key manager on first use."""
        if self._secret is None:
            self._secret = self.manager.get(self.key_id)
        return self._secret

    @property
    def passphrase(self) -> bytes:
        """The LUKS keyslot passphrase the key stands for (the one rule, :func:`passphrase_for`)."""
        return passphrase_for(self.secret)

    @property
    def consumer_registered(self) -> bool:
        return self.registered is not None

    def consume_as(self, consumer: Consumer | None) -> None:
        """Register ``consumer`` on the key when the job succeeds (where the key manager keeps
        consumers; None: nobody to register)."""
        if self.registered is not None:
            raise UsageError("the lease has registered its consumer already")
        self._pending = consumer

    def __enter__(self) -> KeyLease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            self.rollback(exc)
            return
        try:
            self._register()
        except BaseException as failure:
            self.rollback(failure)
            raise

    def _register(self) -> None:
        consumer, self._pending = self._pending, None
        if consumer is None or not self.manager.supports_consumers:
            return
        self.manager.add_consumer(self.key_id, consumer)
        self.registered = consumer

    def rollback(self, cause: BaseException | None = None) -> tuple[Leftover, ...]:
        """Undo what the lease did: remove the consumer it registered, delete the key it
        created. What cannot be undone is recorded (and noted on ``cause``), never hidden."""
        if self.rolled_back:
            return self.leftovers
        self.rolled_back = True
        self._pending = None
        leftovers: list[Leftover] = []
        if self.registered is not None:
            try:
                self.manager.remove_consumer(self.key_id, self.registered)
            except Exception as failure:  # whatever it was, the person must hear of it
                leftovers.append(Leftover(self.key_id, self.registered, _why(failure)))
            self.registered = None
        if self.created:
            try:
                self.manager.delete(self.key_id, force=True)
            except Exception as failure:  # whatever it was, the person must hear of it
                leftovers.append(Leftover(self.key_id, None, _why(failure)))
        self.leftovers = tuple(leftovers)
        if cause is not None:
            for leftover in self.leftovers:
                cause.add_note(str(leftover))
        return self.leftovers


def _why(failure: BaseException) -> str:
    return " ".join((str(failure) or type(failure).__name__).split())


def leftover_notes(exc: BaseException) -> list[str]:
    """The notes a failed rollback added to ``exc`` (what the CLI prints as warnings)."""
    notes: list[str] = getattr(exc, "__notes__", [])
    return [note for note in notes if note.startswith(LEFTOVER_NOTE)]


__all__ = ["LEFTOVER_NOTE", "KeyLease", "Leftover", "leftover_notes"]
