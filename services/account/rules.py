"""The rules an account must meet to be opened or registered (国办发〔2018〕123号 and the
province's own): each refused with a stable code and an explanation. Pure logic."""
from __future__ import annotations

from dataclasses import dataclass

from govmedia_kit.errors import AppError, conflict, invalid

RESPONSIBLE_ROLES = {"principal": "主要负责人", "deputy": "分管负责人", "chief_editor": "总编辑"}


@dataclass
class AccountProposal:
    unit_name: str
    region_name: str
    short_names: list[str]
    platform: str
    name: str
    responsible: dict


def check_account_rules(p: AccountProposal, *, approved_platforms: set[str], open_on_platform: int,
                        exception_recorded: bool) -> None:
    """Raise the first rule a new account breaks."""
    if p.platform not in approved_platforms:
        raise invalid("platform_not_approved", "该平台不在本省批准开设政务新媒体的平台名单内",
                      {"platform": p.platform, "approved": sorted(approved_platforms)})
    check_responsible(p.responsible)
    check_name(p)
    if open_on_platform and not exception_recorded:
        raise conflict("account_exists_for_platform", "同一单位在同一平台原则上只开设一个账号（网管办登记例外的除外）",
                       {"platform": p.platform, "existing": open_on_platform})


def check_responsible(responsible: dict) -> None:
    missing = [role for role in RESPONSIBLE_ROLES if not (responsible.get(role) or "").strip()]
    if missing:
        raise invalid("responsible_incomplete",
                      "须写明主要负责人、分管负责人、总编辑三位责任人：缺少" + "、".join(RESPONSIBLE_ROLES[m] for m in missing),
                      {"missing": missing})


def check_name(p: AccountProposal) -> None:
    """The name must be tied to the unit or its region (名称应与单位或地区名称相关联)."""
    allowed = [n for n in [p.unit_name, p.region_name, *p.short_names] if n]
    if not any(n in p.name for n in allowed):
        raise invalid("account_name_unrelated", "账号名称须包含本单位名称、所在地区名称或已登记的简称",
                      {"name": p.name, "must_contain_one_of": allowed})


def require_state(action: str, state: str, allowed: tuple[str, ...]) -> None:
    if state not in allowed:
        raise AppError(409, "invalid_state", f"账号当前状态为 {state}，不能执行“{action}”",
                       {"action": action, "state": state, "allowed_from": list(allowed)})
