"""Evaluation: the instruments of the paper's tables and the baselines they compare against.

* :mod:`deblur_rotate.evaluate.metrics`: PSNR, SSIM (settings in ``PROTOCOL``), the forward/backward order
  choice for videos, dlib landmarks and their error, identity top-k accuracy, frame-group and view-pair
  summaries. Pure functions.
* :mod:`deblur_rotate.evaluate.baselines`: the "Jin et al. + Zhou et al." cascade of Table 5:
  ``DirectDeblurNet`` (blurry -> 5 sharp frames) and ``texture_warp_rotate`` (3DMM texture-warp rotation).
* :mod:`deblur_rotate.evaluate.inputs`: the options, which tables can run (``plan_tables``), the dataset check
  and the loaded networks (``load_resources``).
* :mod:`deblur_rotate.evaluate.tables`: the paper's Tables 1-5 on a SynthBMFD split (``evaluate(options)``).
* :mod:`deblur_rotate.evaluate.report`: report.md, table<k>.csv, report.json and the figures.
* :mod:`deblur_rotate.evaluate.command`: ``deblur-rotate evaluate``.

Importing this package imports neither submodule (they pull in torch, kornia and dlib); import them directly.
"""

__all__ = ["baselines", "command", "inputs", "metrics", "report", "tables"]
