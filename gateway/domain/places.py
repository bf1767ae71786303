"""The places a gateway gives the long calls of one kind (watches, mapping calls): at most so many held at
once, and so many by any one caller, so that no caller takes them all."""

from __future__ import annotations


class PlacesFull(Exception):
    """No place is free: the gateway's are all held (``by_holder`` False), or the holder's own."""

    def __init__(self, held: int, *, by_holder: bool) -> None:
        super().__init__(f"{held} places held{' by this holder' if by_holder else ''}")
        self.held, self.by_holder = held, by_holder


class Places:
    """At most ``total`` places held at once, and at most ``per_holder`` by one holder."""

    def __init__(self, total: int, per_holder: int) -> None:
        self.total, self.per_holder = total, per_holder
        self.taken = 0
        """Places held now."""
        self._by_holder: dict[str, int] = {}

    def take(self, holder: str) -> None:
        """Hold one more place for ``holder``, or raise `PlacesFull`."""
        if self.taken >= self.total:
            raise PlacesFull(self.taken, by_holder=False)
        held = self._by_holder.get(holder, 0)
        if held >= self.per_holder:
            raise PlacesFull(held, by_holder=True)
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
