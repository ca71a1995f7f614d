"""Channel elements: one id per channel, merged when the graph couples two channels.

Every index of every prunable dimension (a "slot": one dim of one parameter or buffer) and of every
tracked activation is an element id. When an op forces two channels to be removed together (a
residual add, a conv's out-channel and the next conv's in-channel), their elements are merged. A
connected component is then one removable unit: removing it slices every slot index that maps to it.
An element is pinned when some use of it is not understood; its whole component is then kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class ChannelElements:
    def __init__(self) -> None:
        self._parent: list[int] = []
        self._pin_reason: dict[int, str] = {}

    def fresh(self, count: int) -> list[int]:
        """`count` new, independent elements."""
        start = len(self._parent)
        self._parent.extend(range(start, start + count))
        return list(range(start, start + count))

    def find(self, element: int) -> int:
        root = element
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[element] != root:  # path compression
            self._parent[element], element = root, self._parent[element]
        return root

    def unify(self, left: Sequence[int], right: Sequence[int]) -> None:
        """Couple two equally long channel lists index by index."""
        if len(left) != len(right):
            raise ValueError(f"cannot couple {len(left)} channels with {len(right)}")
        for a, b in zip(left, right):
            root_a, root_b = self.find(a), self.find(b)
            if root_a == root_b:
                continue
            self._parent[root_b] = root_a
            if root_b in self._pin_reason:
                self._pin_reason.setdefault(root_a, self._pin_reason.pop(root_b))

    def pin(self, elements: Iterable[int], reason: str) -> None:
        for element in elements:
            self._pin_reason.setdefault(self.find(element), reason)

    def pin_reason(self, element: int) -> str | None:
        return self._pin_reason.get(self.find(element))
