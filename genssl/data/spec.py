"""`DataSpec`: what a method may know about its data before training, saved in every checkpoint so that a
model is rebuilt from its checkpoint alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DataSpec:
    """What a method may know about its data before training."""
    image_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    n_labeled: int
    n_unlabeled: int
    hflip: bool = False
    """Whether a horizontal flip keeps an image's class (clothes, CIFAR-10: yes; digits: no); augmentation
    flips only where it is True."""
    n_pool: int | None = None
    """The unlabeled pool's size had the run used the whole pool (data.n_unlabeled null, no mismatch, no filter;
    genssl.data.source.full_pool_size), while n_unlabeled is the pool it trains on. Quantities that belong to the
    task rather than to the drawn data (M2's classification weight) read this one. None (a spec saved before it
    existed): n_unlabeled stands in, as it did then."""

    @property
    def pool_size(self) -> int:
        """n_pool, or n_unlabeled for a spec saved without it."""
        return self.n_unlabeled if self.n_pool is None else self.n_pool

    def to_dict(self) -> dict:
        return {**asdict(self), "image_shape": list(self.image_shape)}

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        n_pool = d.get("n_pool")
        return cls(tuple(int(v) for v in d["image_shape"]), int(d["num_classes"]), int(d["n_labeled"]),
                   int(d["n_unlabeled"]), bool(d.get("hflip", False)), None if n_pool is None else int(n_pool))
