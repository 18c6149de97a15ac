"""N sites on one machine: Flower's ``Server`` with in-process clients, no Ray.

Flower's own simulation engine runs clients as Ray actors (``flwr[simulation]`` pins Ray),
which is heavy on a 2-core machine. Here Flower's ``Server`` (rounds, sampling, strategy,
failures) drives :class:`InProcessClientProxy` objects that hand every message through
Flower's protobuf serialisation (``flwr.common.serde``), exactly the bytes the gRPC transport
carries, to each site's ``NumPyClient`` in this process, one site at a time. A ``wire`` list
receives every message's bytes, for inspection (``tests/federated``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flwr.common import (
    Code,
    DisconnectRes,
    EvaluateRes,
    FitIns,
    FitRes,
    GetParametersRes,
    GetPropertiesRes,
    Status,
    serde,
)
from flwr.proto.transport_pb2 import ClientMessage, ServerMessage
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from transmed.federated.config import FederatedConfig
from transmed.federated.strategy import EvalFn, FederationState, make_strategy

log = logging.getLogger("transmed.federated")


class InProcessClientProxy(ClientProxy):
    """A site in this process, reached through Flower's wire format."""

    def __init__(self, cid: str, client: Any, wire: list[tuple[str, str, bytes]] | None = None):
        super().__init__(cid)
        self.client = client.to_client() if hasattr(client, "to_client") else client
        self.wire = wire

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        down = serde.fit_ins_to_proto(ins).SerializeToString()
        if self.wire is not None:
            self.wire.append((self.cid, "server->site", down))
        msg = ServerMessage.FitIns()
        msg.ParseFromString(down)
        res = self.client.fit(serde.fit_ins_from_proto(msg))
        up = serde.fit_res_to_proto(res).SerializeToString()
        if self.wire is not None:
            self.wire.append((self.cid, "site->server", up))
        back = ClientMessage.FitRes()
        back.ParseFromString(up)
        return serde.fit_res_from_proto(back)

    def get_parameters(self, ins: Any, timeout: float | None, group_id: int | None,
                       ) -> GetParametersRes:  # fmt: skip
        return self.client.get_parameters(ins)

    def get_properties(self, ins: Any, timeout: float | None, group_id: int | None,
                       ) -> GetPropertiesRes:  # fmt: skip
        return GetPropertiesRes(Status(Code.OK, ""), {})

    def evaluate(self, ins: Any, timeout: float | None, group_id: int | None) -> EvaluateRes:
        raise NotImplementedError("evaluation is centralised on the server's held-out set")

    def reconnect(self, ins: Any, timeout: float | None, group_id: int | None) -> DisconnectRes:
        return DisconnectRes(reason="")


def run_federation(
    config: FederatedConfig,
    clients: dict[str, Any],
    out_dir: Path,
    *,
    evaluate: EvalFn | None = None,
    resume: bool = True,
    wire: list[tuple[str, str, bytes]] | None = None,
    token: str | None = None,
) -> FederationState:
    """Run the federation's remaining rounds over in-process ``clients`` (name → NumPyClient).

    Returns the server's state (global model, per-round records); files in ``out_dir``.
    """
    from flwr.server import Server

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = FederationState(config, out_dir)
    if resume:
        state.resume()
    todo = config.rounds - state.rounds_done
    if todo <= 0:
        log.info("all %d rounds done (%s)", config.rounds, state.ckpt)
        return state
    manager = SimpleClientManager()
    for cid, client in clients.items():
        manager.register(InProcessClientProxy(cid, client, wire))
    strategy = make_strategy(config, state, token=token, evaluate=evaluate,
                             min_clients=min(config.min_clients, len(clients)))  # fmt: skip
    server = Server(client_manager=manager, strategy=strategy)
    server.set_max_workers(1)  # one site at a time: the sites share this machine's cores
    server.fit(num_rounds=todo, timeout=config.round_timeout_s)
    return state
