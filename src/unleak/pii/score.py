"""Precision and recall of a detector against a corpus's ground-truth PII spans.

Every user and assistant turn is scanned. A ground-truth occurrence is found
when a detected span overlaps it (whatever the label: the defence needs PII
caught, not typed). A detected span is correct when it overlaps some
ground-truth occurrence. Recall is reported per ground-truth type, precision
per detected type (labels mapped with `canonical_type`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from unleak.corpus.model import Conversation
from unleak.pii.base import Detector, canonical_type


def score_detector(detector: Detector, conversations: list[Conversation]) -> dict[str, Any]:
    texts, truth = [], []
    for c in conversations:
        for i, t in enumerate(c.turns):
            if t.role != "system":
                texts.append(t.text)
                truth.append(c.pii_in_turn(i))
    found = detector.detect(texts)
    gt_total, gt_hit, pred_total, pred_hit = Counter(), Counter(), Counter(), Counter()
    for gts, spans in zip(truth, found):
        for g in gts:
            gt_total[g.type] += 1
            gt_hit[g.type] += any(s.start < g.end and g.start < s.end for s in spans)
        for s in spans:
            kind = canonical_type(s.label)
            pred_total[kind] += 1
            pred_hit[kind] += any(s.start < g.end and g.start < s.end for g in gts)
    per_type = {}
    for kind in sorted(set(gt_total) | set(pred_total)):
        per_type[kind] = {
            "support": gt_total[kind], "found": gt_hit[kind],
            "recall": round(gt_hit[kind] / gt_total[kind], 4) if gt_total[kind] else None,
            "detected": pred_total[kind],
            "precision": round(pred_hit[kind] / pred_total[kind], 4) if pred_total[kind] else None,
        }
    total_gt, total_pred = sum(gt_total.values()), sum(pred_total.values())
    return {
        "detector": detector.name, "texts": len(texts),
        "recall": round(sum(gt_hit.values()) / total_gt, 4) if total_gt else None,
        "precision": round(sum(pred_hit.values()) / total_pred, 4) if total_pred else None,
        "per_type": per_type,
    }
