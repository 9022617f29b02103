"""Full-ranking evaluation (MMRec protocol) and its dense reference."""
from mmfast.eval.evaluator import MMREC_METRICS, Evaluator
from mmfast.eval.reference import evaluate_reference

__all__ = ["Evaluator", "MMREC_METRICS", "evaluate_reference"]
