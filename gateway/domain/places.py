"""The places a gateway gives the long calls of one kind (watches, mapping calls): at most so many held at
once, so many by any one caller, so that no caller takes them all, and some kept for the callers who change
the books, so that read-only callers together cannot shut out the registry of record."""

from __future__ import annotations


class PlacesFull(Exception):
    """No place is free for this holder: the gateway's are all held, the holder's own are (``by_holder``), or
    only the kept ones are left and the holder may not take them (``kept``)."""

    def __init__(self, held: int, *, by_holder: bool, kept: bool = False) -> None:
        super().__init__(f"{held} places held{' by this holder' if by_holder else ''}")
        self.held, self.by_holder, self.kept = held, by_holder, kept


class Places:
    """At most ``total`` places held at once, at most ``per_holder`` by one holder, and the last ``kept`` of
    them for holders that may take them."""

    def __init__(self, total: int, per_holder: int, kept: int = 0) -> None:
        self.total, self.per_holder, self.kept = total, per_holder, kept
        self.taken = 0
        """Places held now."""
        self._by_holder: dict[str, int] = {}

    def take(self, holder: str, *, may_take_kept: bool = True) -> None:
        """Hold one more place for ``holder``, or raise `PlacesFull`."""
        if self.taken >= self.total:
            raise PlacesFull(self.taken, by_holder=False)
        held = self._by_holder.get(holder, 0)
        if held >= self.per_holder:
            raise PlacesFull(held, by_holder=True)
        if not may_take_kept and self.taken >= self.total - self.kept:
            raise PlacesFull(self.taken, by_holder=False, kept=True)
        self.taken += 1
        self._by_holder[holder] = held + 1

    def give_back(self, holder: str) -> None:
        """Give back one of ``holder``'s places."""
        self.taken -= 1
        left = self._by_holder[holder] - 1
        if left:
            self._by_holder[holder] = left
        else:
            del self._by_holder[holder]
