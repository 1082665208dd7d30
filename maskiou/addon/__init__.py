"""The add-on layer: a trained detector gets the MaskIoU head, and only the head trains, on the
cached detections of labeled images the detector did not train on.

- :mod:`.collect`: the collection pass, through the model's adapter (``adapter.collect``), in one
  process or under torchrun;
- :mod:`.cache`: the samples in memory or in float16 shards on disk, streamed to training;
- :mod:`.fit`: :class:`AddonConfig` and head training / prediction on cached samples;
- :mod:`.recalibration`: the small scikit-learn model over the scores;
- :mod:`.run`: the whole run and its checkpoint; :mod:`.cli`: ``maskiou-addon``.

Built on the core, the adapters, ``maskiou.records``, ``maskiou.data`` and ``maskiou.models``;
the end-to-end trainer and the evaluation are above it and never imported here.
"""
