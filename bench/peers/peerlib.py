"""Where each peer's published function comes from (installed by bench/peers/setup, never copied).

Exactly these functions are called:

| peer (package index)            | function                                                                 |
|---------------------------------|--------------------------------------------------------------------------|
| fastreid 1.4.0                  | ``fastreid.evaluation.rank.evaluate_rank`` (Cython ``rank_cy`` built by its own Makefile; ``use_cython=False`` for its Python loop) |
|                                 | ``fastreid.evaluation.rerank.re_ranking`` (dense k-reciprocal, float32 V) |
|                                 | ``fastreid.evaluation.roc.evaluate_roc`` (Cython ``roc_cy``) + ``sklearn.metrics.roc_curve``, as its ``ReidEvaluator`` does |
|                                 | ``fastreid.utils.compute_dist.build_dist`` (its own distance function; tried, see the tables) |
| torchreid 0.2.5                 | ``torchreid.reid.metrics.distance.compute_distance_matrix`` + ``torchreid.reid.metrics.rank.evaluate_rank`` |
| pytorch-metric-learning 2.9.0   | ``pytorch_metric_learning.utils.accuracy_calculator.AccuracyCalculator(k=None).get_accuracy`` |
| scikit-learn                    | ``sklearn.metrics.roc_curve``, ``sklearn.metrics.roc_auc_score``          |
| faiss-cpu                       | ``faiss.read_index`` / ``faiss.index_factory``, ``faiss.ParameterSpace``, ``Index.search`` |
| hnswlib                         | ``hnswlib.Index(space="l2")``, ``init_index``, ``add_items``, ``set_ef``, ``knn_query`` |

Two peers cannot be imported through their package roots here, so only the module files named
above are loaded (``module_file``), with their parent packages registered empty:
* ``fastreid/evaluation/__init__.py`` imports its trainer-side evaluators, which need packages
  not installed here (termcolor, tabulate, ...: fastreid is installed ``--no-deps`` because its
  metadata pins torch==1.13.1 and torchvision==0.14.1), and its ``testing.py`` does ``from
  collections import Mapping``, which fails on Python >= 3.10;
* ``torchreid/__init__.py`` imports its data pipeline and models (cv2, torchvision), not
  installed here: torchvision does not run beside the CPU torch wheel this project uses.
The module files themselves are the published ones, unchanged; their own relative imports (e.g.
``from .rank_cylib.rank_cy import evaluate_cy``) work as in the package.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path


def module_file(dotted: str):
    """Import ``a.b.c`` without running the ``__init__`` of ``a`` and ``a.b``."""
    parts = dotted.split(".")
    loaded = sys.modules.get(parts[0])
    if loaded is not None and getattr(loaded, "__path__", None):
        folder = Path(list(loaded.__path__)[0])
    else:
        spec = importlib.util.find_spec(parts[0])  # locates the package, runs nothing
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"{parts[0]} is not installed in this environment (run bench/peers/setup)")
        folder = Path(list(spec.submodule_search_locations)[0])
    for depth in range(1, len(parts)):
        name = ".".join(parts[:depth])
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            package.__package__ = name
            sys.modules[name] = package
        folder = folder / parts[depth]
    return importlib.import_module(dotted)


def fastreid_rank():
    return module_file("fastreid.evaluation.rank")


def fastreid_rerank():
    return module_file("fastreid.evaluation.rerank").re_ranking


def fastreid_roc():
    return module_file("fastreid.evaluation.roc")


def fastreid_build_dist():
    return module_file("fastreid.utils.compute_dist").build_dist


def torchreid_rank():
    return module_file("torchreid.reid.metrics.rank")


def torchreid_distance():
    return module_file("torchreid.reid.metrics.distance").compute_distance_matrix


def pml_accuracy_calculator():
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    return AccuracyCalculator
