"""Evaluation: retrieval metrics (ir-measures / pytrec_eval) and answer metrics against the gold answers."""
