"""Methods by name (the YAML ``method`` key). Everything that lists methods iterates
:data:`METHODS`: the search-space checks, the plan, the reports and the comparison (labels,
published orderings, same-data rows), and the tests (parametrised over it).

Add a method (the contract is in ``methods/base.py``; README "Add a method"):

1. ``trainables/methods/<name>.py``: its settings (a ``MethodSettings`` subclass adding only
   its own sections and loss terms) and its trainer (a ``Trainer`` subclass: ``build`` its
   network, ``terms`` of one step, and any hook that differs).
2. One :func:`register` call below.
3. ``search_spaces/<name>.yaml`` and ``tests/test_<name>.py`` for what is its own.

A variant of a method (an ablation) is a setting, never a copy of its code.
"""

from __future__ import annotations

from trainables.methods import cam, mcis, sccam, seam, single_stage
from trainables.methods.base import Claim, Method, check_method

METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Check ``method`` against the contract (methods/base.py) and add it to :data:`METHODS`."""
    check_method(method, METHODS)
    if method.name in METHODS:
        raise TypeError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


register(Method("aal", "single-stage (aal)",
                "single-stage model: CAM -> reliable pseudo labels -> segmentation branch (RRM/AALR)",
                single_stage.SingleStageSettings, single_stage.SingleStageTrainer))
register(Method("cam", "CAM", "CAM baseline: classifier + CAM, masks by a background threshold chosen on train",
                cam.CamMethodSettings, cam.CamTrainer))
register(Method("seam", "SEAM",
                "SEAM: siamese equivariant regularisation, PCM, equivariant cross regularisation (OHEM)",
                seam.SeamSettings, seam.SeamTrainer, baseline=True,
                claims=(Claim("cam", ("SEAM ER+PCM", "SEAM baseline CAM")),)))
register(Method("sccam", "SC-CAM", "SC-CAM: sub-category classification over per-class k-means clusters, in rounds",
                sccam.SccamSettings, sccam.SccamTrainer, baseline=True,
                claims=(Claim("cam", ("SC-CAM CAM", "AffinityNet CAM")),)))
register(Method("mcis", "MCIS", "MCIS: image pairs sharing a class, co-attention and contrastive co-attention",
                mcis.McisSettings, mcis.McisTrainer, baseline=True))
