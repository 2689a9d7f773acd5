"""Simulated consortia: the harness that builds simulated participants and runs, engines, experiments, sweeps."""
