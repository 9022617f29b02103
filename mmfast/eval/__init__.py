"""Full-ranking evaluation (MMRec protocol), its dense reference, and AlignRec's intermediate
metrics of item features (zero-shot, item-CF)."""
from mmfast.eval.evaluator import MMREC_METRICS, Evaluator
from mmfast.eval.intermediate import feature_metrics, results_table
from mmfast.eval.reference import evaluate_reference

__all__ = ["Evaluator", "MMREC_METRICS", "evaluate_reference", "feature_metrics", "results_table"]
