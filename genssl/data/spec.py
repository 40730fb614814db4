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

    def to_dict(self) -> dict:
        return {**asdict(self), "image_shape": list(self.image_shape)}

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        return cls(tuple(int(v) for v in d["image_shape"]), int(d["num_classes"]), int(d["n_labeled"]),
                   int(d["n_unlabeled"]), bool(d.get("hflip", False)))
