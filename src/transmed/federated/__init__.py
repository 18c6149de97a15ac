"""Federated training across hospitals (Flower) with differential privacy (Opacus).

A room of its own: it depends on training, models, data and io, never the reverse.

- :mod:`~transmed.federated.config`: the federation's settings (a TrainConfig + rounds,
  strategy, DP);
- :mod:`~transmed.federated.client`: a site; local rounds run TransMed's own trainer
  (:mod:`~transmed.federated.local` hands it the global weights, FedProx and DP-SGD hooks);
- :mod:`~transmed.federated.privacy`: DP-SGD (Opacus), per-sample gradients, accounting;
- :mod:`~transmed.federated.strategy`: Flower's FedAvg/FedProx with guards, atomic
  checkpoints and resume; :mod:`~transmed.federated.simulation`: N sites in one process;
- :mod:`~transmed.federated.sites`: simulated hospitals that differ;
- :mod:`~transmed.federated.run` / :mod:`~transmed.federated.cli`: ``transmed federated``.
"""

import os

# Flower reports usage events to its developers' server unless told not to; a hospital's
# federation sends nothing anywhere but to its own server.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
