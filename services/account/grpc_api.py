"""gRPC transport of the account service: the same use cases as REST."""
from __future__ import annotations

from datetime import date


from govmedia.account.v1 import account_pb2 as pb
from govmedia.account.v1 import account_pb2_grpc as pb_grpc
from govmedia_kit.auth import grpc_principal
from govmedia_kit.errors import invalid
from govmedia_kit.grpc import grpc_errors, page_limit, parse_request
from govmedia_kit.runtime import Runtime

from . import accounts, signin, usecases
from .models import AccountCreate, AccountPublic, Region, RegionCreate, Unit, UnitCreate, User, UserCreate

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AccountService"].full_name




def _region(r: Region) -> pb.Region:
    return pb.Region(id=r.id, name=r.name, parent_id=r.parent_id or "", level=r.level)


def _unit(u: Unit) -> pb.Unit:
    return pb.Unit(id=u.id, name=u.name, region_id=u.region_id, parent_id=u.parent_id or "", kind=u.kind)


def _user(u: User) -> pb.User:
    return pb.User(id=u.id, username=u.username, display_name=u.display_name, unit_id=u.unit_id, roles=u.roles)


def _account(a: AccountPublic) -> pb.Account:
    return pb.Account(
        id=a.id, unit_id=a.unit_id, platform=a.platform, name=a.name, handle=a.handle or "",
        opened_on=a.opened_on.isoformat() if a.opened_on else "", responsible=pb.Responsible(**a.responsible),
        delivery=pb.Delivery(mode=a.delivery.mode, url=a.delivery.url or ""), status=a.status,
        client_id=a.client_id or "", client_secret=a.client_secret or "",
        filing_due=a.filing_due.isoformat() if a.filing_due else "", filed_on=a.filed_on.isoformat() if a.filed_on else "",
    )


class AccountServicer(pb_grpc.AccountServiceServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    async def _who(self, context, allow_clients: bool = False):
        return await grpc_principal(context, self.rt.verifier, allow_clients)

    @grpc_errors
    async def IssueToken(self, request, context):
        t = await signin.issue_token(self.rt, request.grant_type or "password", request.username, request.password,
                                     request.client_id, request.client_secret, request.refresh_token,
                                     signin.peer_host(context.peer()))
        return pb.TokenResponse(access_token=t.access_token, token_type=t.token_type, expires_in=t.expires_in,
                                refresh_token=t.refresh_token or "", refresh_expires_in=t.refresh_expires_in or 0)

    @grpc_errors
    async def CreateRegion(self, request, context):
        who = await self._who(context)
        data = parse_request(RegionCreate, name=request.name, parent_id=request.parent_id or None, level=request.level)
        return _region(await usecases.create_region(self.rt, who, data))

    @grpc_errors
    async def ListRegions(self, request, context):
        who = await self._who(context)
        items, nxt = await usecases.list_of(self.rt, who, Region, page_limit(request.limit), request.cursor or None)
        return pb.RegionList(items=[_region(r) for r in items], next_cursor=nxt or "")

    @grpc_errors
    async def CreateUnit(self, request, context):
        who = await self._who(context)
        data = parse_request(UnitCreate, name=request.name, region_id=request.region_id, parent_id=request.parent_id or None,
                     kind=request.kind or "government")
        return _unit(await usecases.create_unit(self.rt, who, data))

    @grpc_errors
    async def ListUnits(self, request, context):
        who = await self._who(context)
        items, nxt = await usecases.list_of(self.rt, who, Unit, page_limit(request.limit), request.cursor or None)
        return pb.UnitList(items=[_unit(u) for u in items], next_cursor=nxt or "")

    @grpc_errors
    async def CreateUser(self, request, context):
        who = await self._who(context)
        data = parse_request(UserCreate, username=request.username, password=request.password,
                     display_name=request.display_name, unit_id=request.unit_id, roles=list(request.roles))
        return _user(await usecases.create_user(self.rt, who, data))

    @grpc_errors
    async def ListUsers(self, request, context):
        who = await self._who(context)
        items, nxt = await usecases.list_users(self.rt, who, page_limit(request.limit), request.cursor or None)
        return pb.UserList(items=[_user(u) for u in items], next_cursor=nxt or "")

    @grpc_errors
    async def RegisterAccount(self, request, context):
        who = await self._who(context)
        delivery = {"mode": request.delivery.mode}
        if request.delivery.mode == "webhook":
            delivery.update(url=request.delivery.url, secret=request.delivery.secret)
        try:
            opened_on = date.fromisoformat(request.opened_on)
        except ValueError:
            raise invalid("validation_failed", "opened_on 须为 YYYY-MM-DD", [{"field": "opened_on"}])
        data = parse_request(AccountCreate, unit_id=request.unit_id, platform=request.platform, name=request.name,
                     handle=request.handle, opened_on=opened_on, delivery=delivery,
                     responsible={"principal": request.responsible.principal, "deputy": request.responsible.deputy,
                                  "chief_editor": request.responsible.chief_editor})
        return _account(await accounts.register_account(self.rt, who, data))

    @grpc_errors
    async def GetAccount(self, request, context):
        return _account(await accounts.get_account(self.rt, await self._who(context, allow_clients=True), request.id))

    @grpc_errors
    async def ListAccounts(self, request, context):
        who = await self._who(context)
        items, nxt = await accounts.list_accounts(self.rt, who, page_limit(request.limit), request.cursor or None,
                                                  request.region_id or None, request.unit_id or None,
                                                  request.platform or None, request.status or None)
        return pb.AccountList(items=[_account(AccountPublic.of(a)) for a in items], next_cursor=nxt or "")


def add_to_server(rt: Runtime, server) -> None:
    pb_grpc.add_AccountServiceServicer_to_server(AccountServicer(rt), server)
