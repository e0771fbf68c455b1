"""Console and TensorBoard extras: what compression saved, how the spectra evolve, what the model writes.

``console.py`` holds the console callbacks, ``tensorboard.py`` the dashboard ones, ``base.py`` what they share;
every callback is importable from here (``spectral_lightning.callbacks.X``, the class path the configs name).

Every callback here is cheap enough to leave on (the default configs list them all) and is switched off by
deleting its entry from ``trainer.callbacks`` in the YAML. None of them draws from the global random number
generators, so a run's data stream and dropout masks are the same with or without them. They only present:
every number comes from :mod:`spectral_lightning.analysis`, which the benchmarks use too.

=====================  ==========================================================================================
callback               writes
=====================  ==========================================================================================
ThroughputMonitor      ``train/tokens_per_sec`` (progress bar and logger), measured over ``interval`` steps
ParameterTable         at fit start: a rich table of every parameterized linear and the model totals (console),
                       and the same table as TensorBoard text (``model/parameters``)
ScalarLayout           TensorBoard custom-scalars layout: train and val loss on one chart, val ppl, val bits per
                       byte, lr, tokens/s, stable ranks
HParamsSummary         the hparams tab: every hyperparameter plus ``hparams/val_loss``, ``val_ppl``, ``val_bpb``,
                       ``hparams/stored_ratio`` and ``hparams/stored_params``, rewritten after each validation
TextSamples            ``samples`` text: continuations of a fixed prompt with a fixed seed after each validation
SpectrumMonitor        per parameterized layer, every N validations: ``spectrum/<layer>`` image of the 2-D DCT
                       energy over the m×n frequency plane, ``stable_rank/<layer>`` scalar, ``coefficients/<layer>``
                       histogram of the stored values
=====================  ==========================================================================================

Open the dashboard with ``tensorboard --logdir runs``.
"""

from spectral_lightning.callbacks.base import tensorboard_logger
from spectral_lightning.callbacks.console import ParameterTable, ThroughputMonitor
from spectral_lightning.callbacks.tensorboard import HParamsSummary, ScalarLayout, SpectrumMonitor, TextSamples

__all__ = [
    "HParamsSummary",
    "ParameterTable",
    "ScalarLayout",
    "SpectrumMonitor",
    "TextSamples",
    "ThroughputMonitor",
    "tensorboard_logger",
]
