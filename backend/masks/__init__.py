"""Automatic colour masks (SAM3) for driving clips and reference images.

Import what you need from the submodules (kept out of this package's import so that light modules such as the
worker's schemas can use ``backend.masks.options`` without loading torch):

* ``sam3_loader.load_sam3(folder)``: SAM3 from a local ``facebook/sam3`` folder;
* ``auto.make_auto_masks(settings, segmenter, reference=..., driving=...)``: palette masks for a job;
* ``check.check_mask(mask)``: the fraction of pixels the model would misread;
* ``service.MaskService``: the worker's shared SAM3; ``cli``: ``python -m backend.masks.cli``;
* ``arguments``: the SAM3 command-line options and the ``--*-mask auto`` hook that ``scail2-generate`` shares.
"""
