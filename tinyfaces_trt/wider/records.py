"""Which detectors made a folder of WIDER results, from the records tf-detect keeps.

``tf-detect --wider-dir P`` records beside each result ``P/<event>/<name>.txt`` the detector
that wrote it, in ``P/.tf-detect/<event>/<name>.json`` (``model``: the network; ``config``:
the detection settings). tf-eval reads them to say when one AP mixes several detectors' results,
or results of the untrained network. Results written by other tools have no record.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The hidden folder of a predictions folder that holds tf-detect's records.
RECORDS_FOLDER = ".tf-detect"


def record_path(pred_dir: Path, result: Path) -> Path:
    """The record of the result file ``result`` (``<pred_dir>/<event>/<name>.txt``)."""
    return pred_dir / RECORDS_FOLDER / result.relative_to(pred_dir).with_suffix(".json")


def _result_of(pred_dir: Path, record: Path) -> Path:
    return pred_dir / record.relative_to(pred_dir / RECORDS_FOLDER).with_suffix(".txt")


@dataclass(frozen=True)
class Detectors:
    """The detectors the records of a predictions folder name.

    Attributes:
        counts: (description, number of result files) per distinct detector, most files first.
        untrained: result files made by the untrained network.
        recorded: result files with a readable record.
    """

    counts: list[tuple[str, int]]
    untrained: int
    recorded: int


def detectors_of(pred_dir: str | Path) -> Detectors:
    """Reads the records of the result files under ``pred_dir`` (a record whose result file is
    gone, or that cannot be read, is not counted)."""
    pred_dir = Path(pred_dir)
    seen: Counter[str] = Counter()
    untrained = 0
    for path in sorted((pred_dir / RECORDS_FOLDER).glob("*/*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or not _result_of(pred_dir, path).is_file():
            continue
        model = record.get("model") if isinstance(record.get("model"), dict) else {}
        untrained += model.get("untrained") is True
        seen[describe(model, record.get("config"))] += 1
    return Detectors(seen.most_common(), untrained, sum(seen.values()))


def describe(model: dict[str, Any], config: Any) -> str:
    """One line naming a network and its detection settings."""
    sha = model.get("weights_sha256")
    name = "untrained network" if model.get("untrained") is True else \
        f"weights sha256 {sha[:12]}" if isinstance(sha, str) else "unknown network"
    details = [f"{key} {model[key]}" for key in ("variant", "depth", "seed", "precision")
               if model.get(key) is not None]
    settings = [f"{key} {value}" for key, value in (config or {}).items()
                if value is not None] if isinstance(config, dict) else []
    return ", ".join([name, *details, *settings])
