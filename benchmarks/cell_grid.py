"""Which tower grid names the objects: a cell classifier on frozen features, scored per object.

    python benchmarks/cell_grid.py --run runs/qs-seed2 --stride 32 --steps 3000   # the 7x7 grid
    python benchmarks/cell_grid.py --run runs/qs-seed2 --stride 16 --steps 1000   # 14x14

Reads a quickstart run's training and held-out scenes, labels every cell of the tower's grid the
way ``llavakit align`` does (the front object whose box holds the cell's centre, a small object its
nearest cell, else background; ``train/align_boxes.py``), trains an ``mlp2x_gelu``-sized
classifier with cross-entropy over the ``colour shape`` keys on the training scenes' frozen
features (computed here, held in memory; not the feature cache), and prints for the held-out scenes: object cells right, and objects whose cells' majority
vote is their colour and shape (what ``projector.objects`` says of an object). A proxy screened in
minutes — the alignment itself regresses onto word embeddings; confirm a winner with
``grounding_connector.py`` and the quickstart.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llavakit.imaging import load_image
from llavakit.model.config import VisionConfig
from llavakit.model.vision import build_vision_tower
from llavakit.train.align import AlignConfig
from llavakit.train.align_boxes import cell_words, read_instances


def features(tower, folder: Path, images: list[dict]) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for k in range(0, len(images), 64):
            batch = [load_image(str(folder / im["file_name"])) for im in images[k:k + 64]]
            out.append(tower(tower.preprocess(batch)).to(torch.bfloat16))
    return torch.cat(out)


def labelled(run: Path, split: str, tower, cfg: AlignConfig):
    """Features and per-cell word keys (``red circle``, ``background``) of one split."""
    cfg = replace(cfg, instances=str(run / "scenes" / split / "instances.json"))
    images, by_image, names = read_instances(cfg)
    grid = int(round(tower.num_tokens ** 0.5))
    keys = [[" ".join(c) for c in cell_words(im, by_image[int(im["id"])], names, cfg, grid, tower.config.image_mode,
                                              tower.image_size)] for im in images]
    return features(tower, run / "scenes" / split / "images", images), keys


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a quickstart run dir (scenes/train, scenes/heldout)")
    ap.add_argument("--stride", type=int, choices=(16, 32), default=32, help="vision.feature_stride")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32, help="images per step")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    tower = build_vision_tower(VisionConfig(kind="efficientnet-lite0", image_mode="pad", feature_stride=args.stride))
    cfg = AlignConfig(words=["color", "category"])
    t0 = time.time()
    x, train_keys = labelled(args.run, "train", tower, cfg)
    xh, held_keys = labelled(args.run, "heldout", tower, cfg)
    seconds_features = time.time() - t0
    vocab = {k: i for i, k in enumerate(sorted({k for ks in train_keys + held_keys for k in ks}))}
    y = torch.tensor([[vocab[k] for k in ks] for ks in train_keys])
    yh = torch.tensor([[vocab[k] for k in ks] for ks in held_keys])
    width = 576  # SmolLM2's hidden size: the projector's width
    model = nn.Sequential(nn.Linear(x.shape[-1], width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                          nn.Linear(width, len(vocab)))
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=args.steps, pct_start=0.03)
    t1 = time.time()
    for _ in range(args.steps):
        idx = torch.randint(0, len(x), (args.batch_size,))
        loss = F.cross_entropy(model(x[idx].float()).flatten(0, 1), y[idx].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    seconds_train = time.time() - t1
    with torch.no_grad():
        pred = model(xh.float()).argmax(-1)
    background = vocab[cfg.background]
    on_object = yh != background
    cells_right = 100 * (pred[on_object] == yh[on_object]).float().mean().item()
    key_of = {i: k for k, i in vocab.items()}
    right = total = 0
    for n, keys in enumerate(held_keys):  # an object = the cells labelled with its key in its image
        for want in set(keys) - {cfg.background}:
            votes = Counter(int(pred[n, i]) for i, k in enumerate(keys) if k == want)
            total += 1
            right += key_of[votes.most_common(1)[0][0]] == want
    print(f"stride {args.stride}: grid {tower.num_tokens} x {tower.hidden_size}, features {seconds_features:.0f} s, "
          f"{args.steps} steps {seconds_train:.0f} s | held-out object cells {cells_right:.1f}%, objects' colour+shape "
          f"by cell vote {100 * right / total:.1f}% ({total} labelled objects)")


if __name__ == "__main__":
    main()
