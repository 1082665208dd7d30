"""The evaluation application: inference over a dataset, COCO AP under each scoring, correlation
and calibration of the scores, the cost of the head, reports, and the benchmark runner behind
``benchmarks/coco_eval.py`` (shared with the demo).

Built on the core (``maskiou``), ``maskiou.records``, ``maskiou.data``, ``maskiou.models``,
``maskiou.addon`` and ``maskiou.training``; none of them imports it.
"""
