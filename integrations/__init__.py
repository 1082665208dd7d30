"""maskiou's built-in adapters, installed as ``maskiou_integrations`` (from the top-level
``integrations/`` folder of the repository) and found by ``attach_maskiou_head`` through the
``maskiou.adapters`` entry-point group, the same way a third-party package ships its own."""
