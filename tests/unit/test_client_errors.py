"""A failed call comes back to the client as the domain error the server
raised (one mapping, both ways)."""

from __future__ import annotations

import grpc
import pytest

from kiln_common import errors
from kiln_common.grpc_errors import STATUS_OF, code_name, from_rpc
from kiln_common.jetstream import translate


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize("cls", list(STATUS_OF))
def test_each_status_comes_back_as_its_domain_error(cls: type[errors.KilnError]) -> None:
    error = from_rpc(FakeRpcError(STATUS_OF[cls], "why"))
    assert type(error) is cls
    assert str(error) == "why"
    assert code_name(error) == STATUS_OF[cls].name


def test_an_unknown_status_is_internal() -> None:
    assert isinstance(from_rpc(FakeRpcError(grpc.StatusCode.UNKNOWN, "?")), errors.Internal)


def test_nats_away_is_unavailable_and_a_missing_key_not_found() -> None:
    import nats.errors
    import nats.js.errors

    assert isinstance(translate(nats.errors.NoRespondersError()), errors.Unavailable)
    assert isinstance(translate(nats.errors.ConnectionClosedError()), errors.Unavailable)
    assert isinstance(translate(nats.js.errors.KeyNotFoundError()), errors.NotFound)
    assert translate(ValueError("x")) is None
