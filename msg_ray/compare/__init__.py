"""Comparisons of growth operators against full training: runs, downstream evaluation, speed-up report, plots.

from msg_ray.compare import CompareConfig, run_comparison, rebuild_report, evaluate_checkpoint
"""

from msg_ray.compare.evaluate import EvalConfig, evaluate_checkpoint, evaluate_many, load_model
from msg_ray.compare.finetune import FinetuneConfig
from msg_ray.compare.rebuild import rebuild_report
from msg_ray.compare.report import Report, RunRecord, time_to_reach, write_report
from msg_ray.compare.runner import CompareConfig, ComparisonResult, plan, run_comparison

__all__ = [
    "CompareConfig",
    "ComparisonResult",
    "EvalConfig",
    "FinetuneConfig",
    "Report",
    "RunRecord",
    "evaluate_checkpoint",
    "evaluate_many",
    "load_model",
    "plan",
    "rebuild_report",
    "run_comparison",
    "time_to_reach",
    "write_report",
]
