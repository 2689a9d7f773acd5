"""Each log line of a run once on screen, and in the run's log file."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import hydra
from hydra.core.utils import configure_log
from omegaconf import OmegaConf

from deai_flower.logs import flower_lines_once


def test_flowers_lines_print_once_under_hydras_job_logging(tmp_path: Path) -> None:
    from flwr.common.logger import log

    # Hydra's own job logging, as deai-flower's run gets it: root prints to stdout and writes the log file
    job_logging = OmegaConf.load(Path(hydra.__file__).parent / "conf/hydra/job_logging/default.yaml")
    job_logging.handlers.file.filename = str(tmp_path / "deai-flower.log")
    root, flower = logging.getLogger(), logging.getLogger("flwr")
    saved = (root.handlers[:], root.level, flower.handlers[:], flower.propagate)
    try:
        configure_log(job_logging)
        flower_lines_once()
        flower_lines_once()  # a sweep's next job: still once
        # The screen is every console handler's stream, whichever stream each was given when
        # created (Flower's is made at import, which under xdist can be pytest's own capture
        # object, out of a capture fixture's sight): all of them print into one buffer here.
        screen = io.StringIO()
        consoles = [h for h in (*root.handlers, *flower.handlers)
                    if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]  # fmt: skip
        streams = [h.setStream(screen) for h in consoles]
        try:
            log(logging.WARNING, "participant client-3: reveal guard: nothing to reveal")
        finally:
            for handler, stream in zip(consoles, streams, strict=True):
                handler.setStream(stream)
        for handler in root.handlers:
            handler.flush()
    finally:
        root.handlers[:], flower.handlers[:] = saved[0], saved[2]
        root.setLevel(saved[1])
        flower.propagate = saved[3]
    printed = [line for line in screen.getvalue().splitlines() if "reveal guard" in line]
    assert len(printed) == 1, printed
    written = (tmp_path / "deai-flower.log").read_text(encoding="utf-8").splitlines()
    assert len([line for line in written if "reveal guard" in line]) == 1, written
