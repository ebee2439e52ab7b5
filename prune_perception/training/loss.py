"""Detection loss: task-aligned assignment + quality-aware BCE + GIoU.

Assignment (TOOD/TAL style): for every ground-truth box, candidate cells are those whose
centre lies inside the box or within 2.5 strides of its centre; each candidate gets the
alignment score  a = s^alpha * IoU^beta  (s = predicted score of the GT class, IoU of the
predicted box); the top-k candidates by a become positives. A cell claimed by several boxes
goes to the one it overlaps most. Class targets are soft: the alignment normalised so that
each box's best cell gets the box's best IoU, which trains the score to rank by localisation
quality (what NMS and mAP need). Box loss: 1 - GIoU weighted by the same soft targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prune_perception.models.detector import cell_centers, cell_strides, distances_to_boxes

EPS = 1e-9


@dataclass(frozen=True)
class LossWeights:
    cls: float = 1.0
    box: float = 2.5
    topk: int = 10
    alpha: float = 0.5
    beta: float = 6.0
    center_radius: float = 2.5


def pairwise_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of [..., M, 4] against [..., K, 4] xyxy -> [..., M, K]."""
    a, b = boxes_a.unsqueeze(-2), boxes_b.unsqueeze(-3)
    inter_wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter + EPS)


def giou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of matched pairs [N,4] xyxy -> [N]."""
    inter_wh = (torch.minimum(boxes_a[:, 2:], boxes_b[:, 2:]) - torch.maximum(boxes_a[:, :2], boxes_b[:, :2])).clamp(min=0)
    inter = inter_wh[:, 0] * inter_wh[:, 1]
    area_a = (boxes_a[:, 2:] - boxes_a[:, :2]).clamp(min=0).prod(1)
    area_b = (boxes_b[:, 2:] - boxes_b[:, :2]).clamp(min=0).prod(1)
    union = area_a + area_b - inter + EPS
    hull_wh = torch.maximum(boxes_a[:, 2:], boxes_b[:, 2:]) - torch.minimum(boxes_a[:, :2], boxes_b[:, :2])
    hull = hull_wh[:, 0] * hull_wh[:, 1] + EPS
    return inter / union - (hull - union) / hull


def pad_targets(targets: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[T,6] (batch, cls, xyxy) -> classes [B,M], boxes [B,M,4], valid mask [B,M]."""
    counts = torch.bincount(targets[:, 0].long(), minlength=batch_size) if len(targets) else torch.zeros(batch_size, dtype=torch.long)
    max_boxes = max(int(counts.max()), 1)
    classes = torch.zeros(batch_size, max_boxes, dtype=torch.long)
    boxes = torch.zeros(batch_size, max_boxes, 4)
    valid = torch.zeros(batch_size, max_boxes, dtype=torch.bool)
    for b in range(batch_size):
        rows = targets[targets[:, 0] == b]
        classes[b, :len(rows)] = rows[:, 1].long()
        boxes[b, :len(rows)] = rows[:, 2:6]
        valid[b, :len(rows)] = True
    return classes, boxes, valid


class DetectionLoss:
    """Callable: loss(cls_logits, distances, targets, input_hw) -> (total, {"cls":…, "box":…})."""

    def __init__(self, strides, weights: LossWeights = LossWeights()):
        self.strides = tuple(strides)
        self.w = weights
        # DDP (set by the Trainer under torchrun): norm -> (sum of norm over ranks, world size). Each rank then
        # returns world_size x its summed loss / the global norm, so the gradients DDP averages are exactly
        # the single-process loss's (normalised by the whole global batch's soft targets).
        self.global_normalizer = None

    @torch.no_grad()
    def assign(self, scores, pred_boxes, centers, strides, gt_classes, gt_boxes, valid):
        """Returns target classes [B,K], target boxes [B,K,4], soft scores [B,K] (0 = background)."""
        batch, num_gt = gt_classes.shape
        iou = pairwise_iou(gt_boxes, pred_boxes)                                    # [B,M,K]
        gt_scores = scores.gather(2, gt_classes.unsqueeze(1).expand(-1, scores.shape[1], -1)).transpose(1, 2)
        x, y = centers[:, 0], centers[:, 1]
        gx1, gy1, gx2, gy2 = (gt_boxes[..., i:i + 1] for i in range(4))
        inside = (x > gx1) & (x < gx2) & (y > gy1) & (y < gy2)
        gcx, gcy = (gx1 + gx2) / 2, (gy1 + gy2) / 2
        radius = self.w.center_radius * strides
        near_center = ((x - gcx).abs() < radius) & ((y - gcy).abs() < radius)
        candidate = (inside | near_center) & valid.unsqueeze(-1)
        align = gt_scores.pow(self.w.alpha) * iou.pow(self.w.beta) * candidate
        topk = min(self.w.topk, align.shape[-1])
        top_idx = align.topk(topk, dim=-1).indices
        chosen = torch.zeros_like(candidate).scatter_(-1, top_idx, True) & candidate
        multi = chosen.sum(1, keepdim=True) > 1                                     # cell claimed by >1 box
        best_gt = F.one_hot((iou * chosen).argmax(1), num_gt).transpose(1, 2).bool()
        chosen = torch.where(multi, best_gt & chosen, chosen)
        positive = chosen.any(1)                                                    # [B,K]
        gt_index = chosen.float().argmax(1)                                         # [B,K]
        align = align * chosen
        max_align = align.amax(-1, keepdim=True)
        max_iou = (iou * chosen).amax(-1, keepdim=True)
        soft = (align * max_iou / (max_align + EPS)).amax(1)                        # [B,K]
        target_classes = gt_classes.gather(1, gt_index)
        target_boxes = gt_boxes.gather(1, gt_index.unsqueeze(-1).expand(-1, -1, 4))
        return target_classes, target_boxes, soft * positive, positive

    def __call__(self, cls_logits, distances, targets, input_hw):
        batch = cls_logits.shape[0]
        centers = cell_centers(input_hw, self.strides, cls_logits.device)
        strides = cell_strides(input_hw, self.strides, cls_logits.device)
        pred_boxes = distances_to_boxes(centers, distances)
        gt_classes, gt_boxes, valid = pad_targets(targets.to(cls_logits.device), batch)
        target_classes, target_boxes, soft, positive = self.assign(
            cls_logits.detach().sigmoid(), pred_boxes.detach(), centers, strides, gt_classes, gt_boxes, valid)
        cls_target = F.one_hot(target_classes, cls_logits.shape[-1]).float() * soft.unsqueeze(-1)
        norm, scale = soft.sum(), 1.0
        if self.global_normalizer is not None:
            norm, scale = self.global_normalizer(norm.detach())
        norm = norm.clamp(min=1.0) / scale
        loss_cls = F.binary_cross_entropy_with_logits(cls_logits, cls_target, reduction="sum") / norm
        if positive.any():
            loss_box = ((1 - giou(pred_boxes[positive], target_boxes[positive])) * soft[positive]).sum() / norm
        else:
            loss_box = pred_boxes.sum() * 0
        total = self.w.cls * loss_cls + self.w.box * loss_box
        return total, {"cls": float(loss_cls.detach()), "box": float(loss_box.detach())}
