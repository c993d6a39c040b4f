"""A matrix client in delivery mode `nats`: the protocol of docs/nats-client-protocol.md in
one file, to read and to copy.

What it does, in order:
1. gets an access token from the account service with its client id and secret;
2. gets NATS credentials: by default it makes its own nkey and sends only the public key
   (the seed never leaves this process); `--service-key` asks the service for a ready
   .creds instead;
3. connects to the NATS servers (TCP, or WebSocket with `--websocket`), subscribes to its
   events subject and then says hello, on the first connection and after every reconnect;
4. applies each event to a local SQLite store (item id → state and version) in one
   transaction: a kill always wins, the highest version wins, an event seen before is not
   applied again; and acknowledges it only once it is stored;
5. on SIGTERM or SIGINT drains (events already received are applied and acknowledged)
   and exits 0; before its JWT ends, or when the server refuses or revokes its
   credentials, it fetches new ones;
   when the account service refuses its secret it exits 3 (the secret was rotated or
   revoked, or the account no longer receives over NATS: ask the platform's operators).

    python examples/nats_client.py --account-url https://account.example.gov.cn \\
        --client-id "$ID" --client-secret "$SECRET" --store ./client.db
    python examples/nats_client.py --store ./client.db --show      # what the store holds

Settings also come from the environment: GOVMEDIA_ACCOUNT_URL, GOVMEDIA_CLIENT_ID,
GOVMEDIA_CLIENT_SECRET, GOVMEDIA_STORE, GOVMEDIA_CA_FILE. Needs nats-py, nkeys and httpx
(and aiohttp for WebSocket: `pip install nats-py[aiohttp]`).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import random
import signal
import sqlite3
import ssl
import sys
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
import nats
import nkeys

log = logging.getLogger("govmedia-nats-client")

PUBLISHED, RETRACTED = "govmedia.dispatch.item.published", "govmedia.dispatch.item.retracted"
MAX_ACK_IDS = 1000  # per acknowledgement message
EXIT_REFUSED = 3  # the account service refused this client: new credentials will not come by themselves
# Refusals of the credentials endpoint that asking again will not change (a person must act).
FINAL_REFUSALS = {"invalid_client", "client_required", "not_nats_delivery", "invalid_public_key",
                  "nats_not_configured"}


class Refused(Exception):
    """The account service refused this client for good (bad or revoked secret, wrong delivery mode)."""


class CredentialsRefused(Exception):
    """The NATS server refused or revoked this connection's credentials: fetch new ones."""


# --- the local store -----------------------------------------------------------------------

class Store:
    """What the client shows: item id → state (published | killed), version and the last
    applied event. `seen` holds every applied event id (deduplication); `journal` the order
    in which events were applied (for audit, and the example's test).

    The rules, in one transaction per event:
    - an event whose id was applied before changes nothing (it is acknowledged again);
    - a kill marks the item killed, whatever its version, and for good;
    - a publish of a killed item is ignored; a publish older than the stored version is
      ignored; otherwise it replaces what is shown."""

    def __init__(self, path: str):
        self.db = sqlite3.connect(path)
        self.db.executescript("""
            PRAGMA journal_mode = WAL;
            CREATE TABLE IF NOT EXISTS items (
                item_id TEXT PRIMARY KEY,
                state TEXT NOT NULL CHECK (state IN ('published', 'killed')),
                version INTEGER NOT NULL,
                title TEXT NOT NULL DEFAULT '',
                event TEXT NOT NULL,
                updated_at TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, at TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS journal (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                event_id TEXT NOT NULL, type TEXT NOT NULL, item_id TEXT NOT NULL,
                outcome TEXT NOT NULL, at TEXT NOT NULL);
        """)

    def apply(self, event: dict) -> str:
        """Apply one CloudEvent; returns what happened: shown, killed, kept_killed, older,
        duplicate or ignored (a type this client does not know)."""
        now = datetime.now(timezone.utc).isoformat()
        event_id, kind, data = event["id"], event["type"], event.get("data") or {}
        item_id, version = data.get("item_id") or event.get("subject", ""), int(data.get("version", 0))
        with self.db:  # one transaction: the item, the seen id and the journal row together
            if self.db.execute("SELECT 1 FROM seen WHERE event_id = ?", (event_id,)).fetchone():
                return "duplicate"
            row = self.db.execute("SELECT state, version FROM items WHERE item_id = ?", (item_id,)).fetchone()
            if kind == RETRACTED:
                outcome = "killed"
                self.db.execute(
                    "INSERT INTO items (item_id, state, version, event, updated_at) VALUES (?, 'killed', ?, ?, ?) "
                    "ON CONFLICT (item_id) DO UPDATE SET state = 'killed', version = MAX(version, excluded.version), "
                    "event = excluded.event, updated_at = excluded.updated_at",
                    (item_id, version, json.dumps(event, ensure_ascii=False), now))
            elif kind == PUBLISHED:
                if row and row[0] == "killed":
                    outcome = "kept_killed"  # a kill always wins, however late the publish
                elif row and row[1] > version:
                    outcome = "older"
                else:
                    outcome = "shown"
                    self.db.execute(
                        "INSERT INTO items (item_id, state, version, title, event, updated_at) "
                        "VALUES (?, 'published', ?, ?, ?, ?) ON CONFLICT (item_id) DO UPDATE SET "
                        "version = excluded.version, title = excluded.title, event = excluded.event, "
                        "updated_at = excluded.updated_at",
                        (item_id, version, data.get("title", ""), json.dumps(event, ensure_ascii=False), now))
            else:
                outcome = "ignored"
            self.db.execute("INSERT INTO seen (event_id, at) VALUES (?, ?)", (event_id, now))
            self.db.execute("INSERT INTO journal (event_id, type, item_id, outcome, at) VALUES (?, ?, ?, ?, ?)",
                            (event_id, kind, item_id, outcome, now))
        return outcome

    def items(self) -> dict[str, dict]:
        rows = self.db.execute("SELECT item_id, state, version, title FROM items ORDER BY item_id")
        return {r[0]: {"state": r[1], "version": r[2], "title": r[3]} for r in rows}

    def close(self) -> None:
        self.db.close()


# --- credentials -----------------------------------------------------------------------------

@dataclass
class Config:
    account_url: str
    client_id: str
    client_secret: str
    store: str
    service_key: bool = False  # let the service make the key (the answer then holds a .creds)
    websocket: bool = False
    ca_file: str | None = None


@dataclass
class NatsCredentials:
    account_id: str
    servers: list[str]
    websocket: str | None
    subjects: dict[str, str]
    jwt: str
    seed: bytes  # the user's nkey seed: ours, or the one in the service's .creds
    expires_at: datetime | None  # the JWT's end (None: none): new credentials are fetched before

    def renew_in(self) -> float | None:
        """Seconds until new credentials are due: at 80 % of the JWT's remaining life."""
        if self.expires_at is None:
            return None
        return max(0.8 * (self.expires_at - datetime.now(timezone.utc)).total_seconds(), 10.0)


def _creds_seed(creds: str) -> bytes:
    lines = creds.splitlines()
    start = next(i for i, line in enumerate(lines) if "BEGIN USER NKEY SEED" in line)
    return lines[start + 1].strip().encode()


async def fetch_credentials(cfg: Config) -> NatsCredentials:
    """A token (client credentials grant), then NATS credentials for a key: our own new
    one (only its public key is sent) or, with `service_key`, one the service makes.
    Raises Refused when the service will not serve this client, httpx errors when it cannot
    be reached (the caller retries)."""
    async with httpx.AsyncClient(base_url=cfg.account_url, timeout=15, verify=_ssl_context(cfg)) as http:
        r = await http.post("/v1/auth/token", data={"grant_type": "client_credentials", "client_id": cfg.client_id,
                                                     "client_secret": cfg.client_secret})
        if r.status_code in (400, 401, 403):
            raise Refused(f"token refused ({r.status_code}): {r.text}")
        r.raise_for_status()
        token = r.json()["access_token"]

        own = None if cfg.service_key else nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32),
                                                                                       nkeys.PREFIX_BYTE_USER)))
        body = {} if own is None else {"public_key": own.public_key.decode()}
        r = await http.post("/v1/clients/nats-credentials", json=body, headers={"Authorization": f"Bearer {token}"})
        if r.status_code >= 400 and _error_code(r) in FINAL_REFUSALS:
            raise Refused(f"NATS credentials refused ({r.status_code}): {r.text}")
        r.raise_for_status()  # anything else (a token just made stale, 5xx): asked again after a backoff
        answer = r.json()
    seed = bytes(own.seed) if own is not None else _creds_seed(answer["creds"])
    expires = answer.get("expires_at")
    return NatsCredentials(account_id=answer["account_id"], servers=answer["servers"],
                           websocket=answer.get("websocket"), subjects=answer["subjects"], jwt=answer["jwt"],
                           seed=seed, expires_at=datetime.fromisoformat(expires.replace("Z", "+00:00")) if expires
                           else None)


def _error_code(r: httpx.Response) -> str:
    try:
        return r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""


def _ssl_context(cfg: Config) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cfg.ca_file) if cfg.ca_file else ssl.create_default_context()


def _is_auth_error(exc: BaseException) -> bool:
    """The server refused (Authorization Violation) or ended (User Authentication Revoked /
    Expired) our credentials."""
    text = str(exc).lower()
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in text \
        or "authentication revoked" in text or "authentication expired" in text


# --- one connection with one set of credentials ------------------------------------------------

class Session:
    """Connected with one set of credentials until told to stop or until they are due for
    renewal (returns, drained), or until the server refuses them (raises CredentialsRefused).
    nats-py reconnects by itself, to any server of the list, and subscribes again; we say
    hello again after each reconnect."""

    def __init__(self, cfg: Config, creds: NatsCredentials, store: Store):
        self.cfg, self.creds, self.store = cfg, creds, store
        self.nc: nats.NATS | None = None
        self.closed = asyncio.Event()
        self.refused: BaseException | None = None

    # nats-py asks for the JWT and a signature of the server's nonce at every (re)connect:
    # the seed stays in this process.
    def _jwt(self) -> bytes:
        return self.creds.jwt.encode()

    def _sign(self, nonce: str) -> bytes:
        return base64.b64encode(nkeys.from_seed(bytearray(self.creds.seed)).sign(nonce.encode()))

    async def run(self, stop: asyncio.Event) -> None:
        servers = [self.creds.websocket] if self.cfg.websocket and self.creds.websocket else self.creds.servers
        tls = _ssl_context(self.cfg) if any(s.startswith(("tls:", "wss:")) for s in servers) else None
        self.nc = nats.NATS()
        # nats-py tries the servers until one answers (forever: max_reconnect_attempts=-1),
        # so the first connection races a stop and a refusal of our credentials.
        connecting = asyncio.ensure_future(self.nc.connect(
            servers, name=f"govmedia-client-{self.creds.account_id}", tls=tls,
            user_jwt_cb=self._jwt, signature_cb=self._sign,
            max_reconnect_attempts=-1, reconnect_time_wait=2,  # forever, across every server
            reconnected_cb=self._reconnected, disconnected_cb=self._disconnected,
            error_cb=self._error, closed_cb=self._closed))
        if not await self._until(stop, connecting):
            connecting.cancel()
            await self.nc.close()
            if self.refused is not None:
                raise CredentialsRefused(str(self.refused))
            return
        connecting.result()  # raises what connect raised
        events = self.creds.subjects["events"]
        await self.nc.subscribe(events, cb=self._event, pending_msgs_limit=100_000)
        await self.nc.flush()  # the subscription is in place before we ask for anything
        await self._hello()
        log.info("connected to %s, listening on %s", self._server(), events)
        renew_in = self.creds.renew_in()
        renewal = asyncio.ensure_future(asyncio.sleep(renew_in)) if renew_in is not None else None
        if await self._until(stop, renewal):
            log.info("credentials due for renewal: draining, then connecting with new ones")
        elif renewal is not None:
            renewal.cancel()
        if self.refused is not None:
            if not self.nc.is_closed:
                await self.nc.close()
            raise CredentialsRefused(str(self.refused))
        if self.nc.is_closed and not stop.is_set():  # closed by the server for another reason
            raise ConnectionError(f"connection closed: {self.nc.last_error!r}")
        if not self.nc.is_closed:
            # Stop taking new events; what is already here is applied and acknowledged
            # (the callback runs for each), the acknowledgements flushed, then closed.
            await self.nc.drain()

    async def _until(self, stop: asyncio.Event, task: asyncio.Future | None = None) -> bool:
        """Wait for `task` (True once it is done), a stop or the connection's end (False)."""
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.closed.wait())]
        await asyncio.wait(waiters + ([task] if task else []), return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        return task is not None and task.done()

    async def _hello(self) -> None:
        """After the subscription is in place: dispatch sends every kill we have not
        acknowledged, then every publish we have not acknowledged, in order."""
        await self.nc.publish(self.creds.subjects["hello"], b"{}")

    async def _event(self, msg) -> None:
        try:
            event = json.loads(msg.data)
            outcome = self.store.apply(event)
        except (ValueError, KeyError, TypeError) as exc:  # not an event: never acknowledged, logged
            log.error("unreadable event on %s: %s", msg.subject, exc)
            return
        log.info("%s %s item=%s version=%s -> %s", event["id"], event["type"].rsplit(".", 1)[-1],
                 event.get("subject"), (event.get("data") or {}).get("version"), outcome)
        # Only now that it is stored: a crash before this line gets the event again.
        await self.ack([event["id"]])

    async def ack(self, ids: list[str]) -> None:
        for start in range(0, len(ids), MAX_ACK_IDS):
            body = {"ids": ids[start:start + MAX_ACK_IDS]}
            await self.nc.publish(self.creds.subjects["ack"], json.dumps(body).encode())

    def _server(self) -> str:
        url = self.nc.connected_url
        return f"{url.scheme}://{url.netloc}" if url else "?"

    async def _reconnected(self) -> None:
        log.info("reconnected to %s: hello again", self._server())
        await self._hello()

    async def _disconnected(self) -> None:
        log.info("disconnected")

    async def _error(self, exc: Exception) -> None:
        if _is_auth_error(exc):
            log.warning("the server refused our credentials: %s", exc)
            self.refused = exc
            self.closed.set()  # run() closes the connection and asks for new credentials
        else:
            log.warning("NATS: %r", exc)

    async def _closed(self) -> None:
        if self.nc is not None and self.nc.last_error is not None and _is_auth_error(self.nc.last_error):
            self.refused = self.refused or self.nc.last_error
        self.closed.set()


# --- the whole client ---------------------------------------------------------------------------

async def run(cfg: Config) -> int:
    store = Store(cfg.store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    delay = 1.0
    try:
        while not stop.is_set():
            try:
                creds = await fetch_credentials(cfg)
                log.info("NATS credentials for account %s (%s key)", creds.account_id,
                         "the service's" if cfg.service_key else "our own")
                await Session(cfg, creds, store).run(stop)  # stopped, or renewing: the loop says
                delay = 1.0
                continue
            except Refused as exc:
                log.error("%s", exc)
                return EXIT_REFUSED
            except CredentialsRefused as exc:
                log.warning("credentials refused or revoked (%s): fetching new ones", exc)
            except (httpx.HTTPError, OSError, nats.errors.Error) as exc:
                log.warning("cannot reach the platform (%r)", exc)
            # Back off (jittered, up to a minute) before asking again, unless told to stop.
            try:
                await asyncio.wait_for(stop.wait(), delay * random.uniform(0.5, 1.0))
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, 60.0)
        return 0
    finally:
        store.close()


def parse_args(argv: list[str] | None = None) -> tuple[Config, bool]:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--account-url", default=env("GOVMEDIA_ACCOUNT_URL"), help="the account service's base URL")
    p.add_argument("--client-id", default=env("GOVMEDIA_CLIENT_ID"))
    p.add_argument("--client-secret", default=env("GOVMEDIA_CLIENT_SECRET"),
                   help="better given in GOVMEDIA_CLIENT_SECRET than on the command line")
    p.add_argument("--store", default=env("GOVMEDIA_STORE", "govmedia-client.db"), help="the local SQLite store")
    p.add_argument("--service-key", action="store_true",
                   help="let the account service make the nkey (default: make our own, send the public key)")
    p.add_argument("--websocket", action="store_true", help="connect over WebSocket (needs aiohttp)")
    p.add_argument("--ca-file", default=env("GOVMEDIA_CA_FILE"), help="CA bundle for the services' TLS")
    p.add_argument("--show", action="store_true", help="print the store's items as JSON and exit")
    a = p.parse_args(argv)
    if not a.show and not (a.account_url and a.client_id and a.client_secret):
        p.error("--account-url, --client-id and --client-secret (or GOVMEDIA_ACCOUNT_URL, _CLIENT_ID, "
                "_CLIENT_SECRET) are required")
    return Config(account_url=a.account_url or "", client_id=a.client_id or "", client_secret=a.client_secret or "",
                  store=a.store, service_key=a.service_key, websocket=a.websocket, ca_file=a.ca_file), a.show


def main(argv: list[str] | None = None) -> int:
    cfg, show = parse_args(argv)
    if show:
        store = Store(cfg.store)
        print(json.dumps(store.items(), ensure_ascii=False, indent=2))
        store.close()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    return asyncio.run(run(cfg))


if __name__ == "__main__":
    sys.exit(main())
