"""Scoring every Table 1 subset and ablation (evaluate, scoring, seen_unseen), the baselines
(baselines), and what people read: report.md, figures and the multi-seed benchmark report.

May import: tasks.training and everything below it.
"""
