"""The miniature's photos: training crops minus held-out strips, and the fixed held-out crops."""

from __future__ import annotations

from pathlib import Path

import torch

from ...training.seeds import generator_for


class PhotoCrops:
    """Training crops from the photos minus their held-out strips, and the fixed grid of held-out crops.

    Every crop is a pure function of (seed, purpose, index); ``train`` returns uint8 (B, 3, crop, crop) as the
    trainer's data loader does.
    """

    def __init__(self, paths: tuple[str, ...], crop: int, holdout: int, seed: int) -> None:
        from ...imageio import load_image

        self.photos = []
        for path in paths:
            if not Path(path).is_file():
                raise FileNotFoundError(
                    f"miniature: photo {path} not found; it uses the sample photos in docs/samples of the "
                    "repository (pass --images to use others)"
                )
            photo = load_image(path)[0]
            if photo.shape[1] < crop or photo.shape[2] < holdout + 2 * crop or holdout < crop:
                raise ValueError(f"{path} is {tuple(photo.shape[1:])}; needs >= {crop} rows and a wider training part")
            self.photos.append((photo * 255).round().to(torch.uint8))
        self.crop, self.holdout, self.seed = crop, holdout, seed

    def train(self, purpose: str, indices: range, flip: bool = True) -> torch.Tensor:
        out = []
        for k in indices:
            generator = generator_for(self.seed, purpose, k)
            photo = self.photos[int(torch.randint(len(self.photos), (), generator=generator))]
            height, width = photo.shape[1:]
            y = int(torch.randint(height - self.crop + 1, (), generator=generator))
            x = int(torch.randint(width - self.holdout - self.crop + 1, (), generator=generator))
            crop = photo[:, y : y + self.crop, x : x + self.crop]
            if flip and bool(torch.rand((), generator=generator) < 0.5):
                crop = crop.flip(-1)
            out.append(crop)
        return torch.stack(out)

    def heldout(self, limit: int | None = None) -> torch.Tensor:
        """Non-overlapping crops tiling the held-out strip of each photo, float (N, 3, crop, crop) in [0, 1]."""
        out = []
        for photo in self.photos:
            height, width = photo.shape[1:]
            for y in range(0, height - self.crop + 1, self.crop):
                for x in range(width - self.holdout, width - self.crop + 1, self.crop):
                    out.append(photo[:, y : y + self.crop, x : x + self.crop])
        crops = torch.stack(out).float() / 255
        if limit is not None:
            # Spread a subset over both photos rather than taking the first photo's top rows.
            crops = crops[torch.linspace(0, len(crops) - 1, min(limit, len(crops))).round().long()]
        return crops
