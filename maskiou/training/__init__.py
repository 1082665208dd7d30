"""The end-to-end training application: the trainer (CPU/GPU, AMP, torchrun, exact resume) and
export/deploy of trained models.

Built on the core (``maskiou``), ``maskiou.data`` and ``maskiou.models``; the add-on
(``maskiou.addon``) and the core never import it.
"""
