"""Experiments built on the library: ablation grids, cross-validation, the seed studies, the benchmark."""
