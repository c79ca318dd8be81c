"""Builds small WIDER FACE ground-truth .mat files with the official structure.

The official ``eval_tools/ground_truth/wider_*_val.mat`` (MATLAB v5) hold, each as an
(E, 1) cell array over events:

* ``event_list``: char, the event folder name;
* ``file_list``: (N_e, 1) cell of char, image names without extension;
* ``face_bbx_list``: (N_e, 1) cell of int32 (G, 4) ``[x y w h]``;
* ``blur_label_list``, ``expression_label_list``, ``illumination_label_list``,
  ``invalid_label_list``, ``occlusion_label_list``, ``pose_label_list``: (N_e, 1) cell of
  uint8 (G, 1);
* ``gt_list`` (only in the easy/medium/hard files): (N_e, 1) cell of double (K, 1), the
  1-based indices of the faces that count in that setting.

The dataset itself cannot be shipped; tests write their own files with this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.io import loadmat, savemat

LABELS = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
SETTINGS = ("easy", "medium", "hard")


@dataclass
class SynthImage:
    """One image: its faces ``[x, y, w, h]`` and, per setting, the 0-based faces that count
    (a setting left out keeps every face)."""

    name: str
    boxes: Sequence[Sequence[float]]
    keep: Mapping[str, Sequence[int]] = field(default_factory=dict)

    def kept(self, setting: str) -> list[int]:
        if setting in self.keep:
            return list(self.keep[setting])
        return list(range(len(self.boxes)))


def cells(items: Sequence[object]) -> np.ndarray:
    """An (N, 1) MATLAB cell array holding ``items``."""
    out = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):  # element-wise, so numpy never merges equal shapes
        out[i, 0] = item
    return out


def replace_variables(path: str | Path, **variables: object) -> Path:
    """Rewrites the .mat file ``path`` with ``variables`` replaced (malformed-file tests)."""
    mat = {k: v for k, v in loadmat(str(path)).items() if not k.startswith("__")}
    mat.update(variables)
    savemat(str(path), mat, format="5")
    return Path(path)


def write_ground_truth(directory: str | Path, events: Mapping[str, Sequence[SynthImage]],
                       box_dtype: type = np.int32) -> Path:
    """Writes ``wider_face_val.mat`` and ``wider_{easy,medium,hard}_val.mat`` to ``directory``.

    ``box_dtype`` is the MATLAB class of ``face_bbx_list`` (int32 in the official files).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = list(events)
    images = [list(events[e]) for e in names]
    base = {
        "event_list": cells(names),
        "file_list": cells([cells([im.name for im in ims]) for ims in images]),
        "face_bbx_list": cells([cells([np.asarray(im.boxes, dtype=box_dtype).reshape(-1, 4)
                                         for im in ims]) for ims in images]),
    }
    for label in LABELS:
        base[f"{label}_label_list"] = cells([cells([np.zeros((len(im.boxes), 1), np.uint8)
                                                      for im in ims]) for ims in images])
    savemat(str(directory / "wider_face_val.mat"), base, format="5")
    for setting in SETTINGS:
        gt_list = cells([cells([np.asarray(im.kept(setting), dtype=np.float64).reshape(-1, 1) + 1
                                  for im in ims]) for ims in images])
        savemat(str(directory / f"wider_{setting}_val.mat"), {**base, "gt_list": gt_list},
                format="5")
    return directory
