"""Measuring the features: the probe against honest baselines (``probe``, with ``feature_sets``, ``classifiers`` and
``tables``), and the ConvAE-versus-FCAE evidence (``compare``, with ``measures``)."""
