"""Hydra configs, installed as a package so `pkg://conf` finds them from any directory."""
