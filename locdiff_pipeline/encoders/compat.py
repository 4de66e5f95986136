"""Environment fixes that must run before heavy imports.

torchvision 0.28.0 (the only release pinned to torch 2.13.0) is built against CUDA torch; on the CPU
build its compiled ops do not load, and it then fails on import while registering fake kernels for
`nms`/`qnms`. Declaring those two operator schemas first lets it import; transforms, models and
open_clip then work (compiled ops such as decode_jpeg stay unavailable, so images are decoded with
Pillow). On CUDA torch nothing is done.
"""

from __future__ import annotations

import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "encoder_configs"  # the project's small open_clip configs (tests)

_library = None


def prepare_torchvision() -> None:
    """Make `import torchvision` (and so `import open_clip`) work on the CPU build of torch."""
    global _library
    if _library is not None or "torchvision" in sys.modules:
        return
    import torch

    if torch.version.cuda is not None:
        return
    try:
        _library = torch.library.Library("torchvision", "DEF")
        _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:  # already defined by a working torchvision build
        _library = False


def import_open_clip():
    """open_clip, importable on CPU torch and knowing the project's small test configs."""
    prepare_torchvision()
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    return open_clip
