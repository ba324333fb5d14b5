"""Offline lm-eval task definitions (YAML + utils.py), registered by harness.lm_eval_bridge: see utils.py."""
