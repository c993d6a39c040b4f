"""Who may do what on the NATS servers: the operator, the three accounts, each service's
user and each matrix client's subjects (README, "NATS: accounts and credentials").

- SYS: the servers' own account; the account service holds a user of it to push the
  CLIENTS account's JWT (with its revocations) to every server.
- GOVMEDIA: the services' bus. Each service is a user that may publish only its own
  events (`govmedia.<service>.>`), dead letters and the JetStream calls a consumer needs
  (never deleting or purging a stream): content alone can publish `item.retracted`.
- CLIENTS: matrix clients in delivery mode `nats`, one user each, issued by the account
  service with a signing key of this account; a client subscribes only to its own events
  and publishes only its own acknowledgements, hellos and metrics. Dispatch holds one user
  here that publishes every client's events and hears every client's replies.

An estate is a directory of keys, JWTs and .creds files: `ensure` makes one for `make run`
and the tests (production makes its own with `govmedia nats-estate` and keeps the
operator's seed offline)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import nats_jwt
from .config import SERVICES
from .nats_jwt import Key

CLIENT_PREFIX = "govmedia.client"
DLQ_SUBJECTS = "govmedia.dlq.>"
DISPATCH_WAKE = "govmedia_wake.dispatch"
# The JetStream API a service's bus uses: declare the streams, create and read its durable
# consumers, acknowledge. Not granted: deleting or purging a stream, deleting messages.
JETSTREAM_CALLS = ["$JS.API.INFO", "$JS.API.STREAM.CREATE.*", "$JS.API.STREAM.UPDATE.*", "$JS.API.STREAM.INFO.*",
                   "$JS.API.STREAM.NAMES", "$JS.API.CONSUMER.CREATE.>", "$JS.API.CONSUMER.DURABLE.CREATE.>",
                   "$JS.API.CONSUMER.INFO.>", "$JS.API.CONSUMER.MSG.NEXT.>", "$JS.ACK.>"]
CLIENT_CONNECTIONS = ["STANDARD", "WEBSOCKET"]


def client_subjects(account_id: str) -> dict[str, str]:
    """The subjects of one matrix client (docs/nats-client-protocol.md)."""
    base = f"{CLIENT_PREFIX}.{account_id}"
    return {"events": f"{base}.events", "ack": f"{base}.ack", "hello": f"{base}.hello", "metrics": f"{base}.metrics"}


def client_permissions(account_id: str) -> tuple[list[str], list[str]]:
    """(publish, subscribe) of a matrix client: its own subjects only."""
    s = client_subjects(account_id)
    return [s["ack"], s["hello"], s["metrics"]], [s["events"]]


DISPATCH_CLIENTS_PERMISSIONS = ([f"{CLIENT_PREFIX}.*.events"],
                                [f"{CLIENT_PREFIX}.*.ack", f"{CLIENT_PREFIX}.*.hello", f"{CLIENT_PREFIX}.*.metrics"])


def service_permissions(service: str) -> tuple[list[str], list[str]]:
    """(publish, subscribe) of a service on the bus."""
    publish = [f"govmedia.{service}.>", DLQ_SUBJECTS, *JETSTREAM_CALLS]
    subscribe = ["_INBOX.>"]
    if service == "dispatch":  # the replicas' wake-up hint (services/dispatch/service.py)
        publish.append(DISPATCH_WAKE)
        subscribe.append(DISPATCH_WAKE)
    return publish, subscribe


def clients_account_jwt(operator_signing: Key, clients_account: str, clients_signing: str,
                        revocations: dict[str, int] | None = None) -> str:
    """The CLIENTS account as the servers hold it; the account service signs it again,
    with the revoked client keys, whenever one is revoked."""
    return nats_jwt.account_jwt(operator_signing, clients_account, "CLIENTS", signing_keys=[clients_signing],
                                revocations=revocations)


@dataclass(frozen=True)
class Estate:
    """One estate's files (see the module's docstring)."""

    dir: Path

    # --- what the processes are given ---
    def creds(self, user: str) -> Path:
        """A .creds file: a service ("content"…), "dispatch-clients", "account-sys" or "admin"."""
        return self.dir / "creds" / f"{user}.creds"

    @property
    def operator_signing_seed(self) -> Path:
        return self.dir / "keys" / "operator-signing.seed"

    @property
    def clients_signing_seed(self) -> Path:
        return self.dir / "keys" / "clients-signing.seed"

    def public(self, name: str) -> str:
        return self._names()[name]

    def _names(self) -> dict[str, str]:
        return json.loads((self.dir / "accounts.json").read_text())

    def service_env(self, service: str) -> dict[str, str]:
        """The variables a service process needs to reach the bus with its own user, and
        (account) to issue and revoke clients, (dispatch) to reach them."""
        env = {"NATS_CREDS": str(self.creds(service))}
        if service == "account":
            env.update({"ACCOUNT_NATS_CLIENTS_ACCOUNT": self.public("CLIENTS"),
                        "ACCOUNT_NATS_CLIENTS_SIGNING_SEED_FILE": str(self.clients_signing_seed),
                        "ACCOUNT_NATS_OPERATOR_SIGNING_SEED_FILE": str(self.operator_signing_seed),
                        "ACCOUNT_NATS_SYSTEM_CREDS": str(self.creds("account-sys"))})
        if service == "dispatch":
            env["DISPATCH_CLIENTS_NATS_CREDS"] = str(self.creds("dispatch-clients"))
        return env

    def server_auth(self) -> str:
        """The part of nats-server's configuration that puts it in operator mode: the
        operator, the system account, and every account's JWT preloaded into the full
        resolver (which takes later updates pushed by the account service)."""
        names = self._names()
        preload = "\n".join(f"  {names[n]}: \"{(self.dir / 'accounts' / f'{n}.jwt').read_text().strip()}\""
                            for n in ("SYS", "GOVMEDIA", "CLIENTS"))
        return (f"operator: \"{(self.dir / 'operator.jwt').read_text().strip()}\"\n"
                f"system_account: {names['SYS']}\n"
                f"resolver_preload {{\n{preload}\n}}\n")

    # --- making one ---
    @classmethod
    def ensure(cls, directory: Path) -> "Estate":
        """The estate in `directory`, made there first if it has none (development and tests)."""
        estate = cls(Path(directory))
        if not (estate.dir / "accounts.json").exists():
            estate._create()
        return estate

    def _create(self) -> None:
        keys = self.dir / "keys"
        for sub in ("keys", "accounts", "creds"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        operator, operator_signing = Key.new("operator"), Key.new("operator")
        sys_, govmedia, clients, clients_signing = (Key.new("account") for _ in range(4))
        _write(keys / "operator.seed", operator.seed)
        _write(self.operator_signing_seed, operator_signing.seed)
        _write(self.clients_signing_seed, clients_signing.seed)
        (self.dir / "operator.jwt").write_text(nats_jwt.operator_jwt(operator, "govmedia", sys_.public,
                                                                     [operator_signing.public]))
        jwts = {"SYS": nats_jwt.account_jwt(operator_signing, sys_.public, "SYS"),
                "GOVMEDIA": nats_jwt.account_jwt(operator_signing, govmedia.public, "GOVMEDIA", jetstream=True),
                "CLIENTS": clients_account_jwt(operator_signing, clients.public, clients_signing.public)}
        for name, jwt in jwts.items():
            (self.dir / "accounts" / f"{name}.jwt").write_text(jwt)
        for service in SERVICES:
            self._user(govmedia, service, *service_permissions(service))
        self._user(govmedia, "admin", [">"], [">"])  # operators' tools and the tests' observers
        self._user(clients, "dispatch-clients", *DISPATCH_CLIENTS_PERMISSIONS)
        self._user(sys_, "account-sys", ["$SYS.REQ.CLAIMS.UPDATE", "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE"], ["_INBOX.>"])
        (self.dir / "accounts.json").write_text(json.dumps(
            {"operator": operator.public, "SYS": sys_.public, "GOVMEDIA": govmedia.public,
             "CLIENTS": clients.public}, indent=1))

    def _user(self, account: Key, name: str, publish: list[str], subscribe: list[str]) -> None:
        user = Key.new("user")
        jwt = nats_jwt.user_jwt(account, user.public, name, publish=publish, subscribe=subscribe)
        _write(self.creds(name), nats_jwt.creds(jwt, user.seed).encode())


def _write(path: Path, data: bytes) -> None:
    """A secret: readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
