"""The training application: configurations, model builders, the trainer (CPU/GPU, AMP, torchrun,
exact resume), atomic checkpoints, and head-only training of the add-on on a frozen detector.

Built on the core (``maskiou``) and ``maskiou.data``; the core never imports it.
"""
