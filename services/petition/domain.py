"""Petition rules that do not depend on storage or transport: categories, states and the
actions that move a case between them (each declares the states it applies to, the roles it
needs and whose side of the case it is on — Superdesk style), default SLA policies, contact
checks."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from govmedia_kit import workdays
from govmedia_kit.errors import invalid
from govmedia_kit.public import normalize_phone

from .sla import CALENDAR_DAYS, WORKDAYS, Period

CATEGORIES = ("consultation", "help", "suggestion", "complaint", "report", "petition")
CHANNELS = ("web", "app", "comment", "hotline", "wechat", "weibo", "email", "open311")
STATUSES = ("received", "accepted", "declined", "assigned", "returned", "in_progress", "waiting", "answered",
            "closed", "rechecking", "reviewing", "linked")
# A complaint, a report or a formal petition has to be answerable and is handled for a person.
CONTACT_REQUIRED = ("complaint", "report", "petition")
# States in which the case is still somebody's work (its SLA clock exists).
OPEN_STATES = ("received", "accepted", "assigned", "returned", "in_progress", "waiting", "rechecking", "reviewing")
FINISHED_STATES = ("declined", "answered", "closed", "linked")
# What the citizen (receipt, tracking, Open311) is shown for a status. A case linked to an
# earlier one of the same phone shows as freshly received: whoever types a phone number into
# the public form must not learn whether that phone already filed a similar matter (the
# linking is staff's business; they see `linked` and `duplicate_of`).
_CITIZEN_STATUS = {"linked": "received"}


def citizen_status(status: str) -> str:
    return _CITIZEN_STATUS.get(status, status)

# Categories never shown on the public Open311 face, whatever the setting says: a report (举报)
# names who is reported and puts the whistle-blower at risk; a formal petition (信访) is a
# person's own matter under 信访工作条例 (Art. 45: keep the petitioner's data confidential).
NEVER_PUBLIC = ("report", "petition")

CATEGORY_ZH = {"consultation": "咨询", "help": "求助", "suggestion": "建议", "complaint": "投诉", "report": "举报",
               "petition": "信访事项"}
STATUS_ZH = {"received": "已受理登记", "accepted": "已受理", "declined": "不予受理", "assigned": "已转办",
             "returned": "已退回", "in_progress": "办理中", "waiting": "待补充材料", "answered": "已答复",
             "closed": "已办结", "rechecking": "复查中", "reviewing": "复核中", "linked": "已合并"}
CHANNEL_ZH = {"web": "网站", "app": "客户端", "comment": "评论", "hotline": "热线", "wechat": "微信",
              "weibo": "微博", "email": "电子邮件", "open311": "Open311 接口"}


# --- actions ----------------------------------------------------------------------------

DESK = "desk"        # the intake desk: the unit that accepted the case and assigns it (转办)
UNIT = "unit"        # the responsible unit the case is assigned to
CITIZEN = "citizen"  # the citizen, by tracking code, without signing in


@dataclass(frozen=True)
class Action:
    name: str
    states: tuple[str, ...]
    roles: tuple[str, ...]
    side: str
    zh: str


ACTIONS: dict[str, Action] = {a.name: a for a in (
    Action("accept", ("received",), ("handler",), DESK, "受理"),
    Action("decline", ("received",), ("handler",), DESK, "不予受理"),
    Action("assign", ("accepted", "returned"), ("handler",), DESK, "转办"),
    Action("return", ("assigned", "in_progress"), ("handler",), UNIT, "退回"),
    Action("start", ("assigned",), ("handler",), UNIT, "开始办理"),
    Action("wait", ("assigned", "in_progress"), ("handler",), UNIT, "待补充材料"),
    Action("resume", ("waiting",), ("handler",), UNIT, "恢复办理"),
    Action("extend", ("assigned", "in_progress", "waiting"), ("principal",), UNIT, "延期"),
    Action("answer", ("assigned", "in_progress"), ("handler",), UNIT, "答复"),
    Action("close", ("answered",), ("handler",), UNIT, "办结"),
    Action("feature", ("answered", "closed"), ("handler", "principal"), UNIT, "精选公开"),
    Action("decide", ("rechecking", "reviewing"), ("handler",), DESK, "复查/复核决定"),
    Action("rate", ("answered", "closed"), (), CITIZEN, "评价"),
    Action("supplement", ("waiting",), (), CITIZEN, "补充材料"),
    Action("recheck", ("answered", "closed"), (), CITIZEN, "申请复查/复核"),
)}
STAFF_ACTIONS = tuple(n for n, a in ACTIONS.items() if a.side != CITIZEN)
CITIZEN_ACTIONS = tuple(n for n, a in ACTIONS.items() if a.side == CITIZEN)

# Windows of 信访工作条例 2022: objection to a wrong transfer (Art. 23), 复查/复核 requests (Art. 35/36).
RETURN_WINDOW = Period(5, WORKDAYS)
RECHECK_WINDOW = Period(30, CALENDAR_DAYS)


# --- default SLA policies ---------------------------------------------------------------

@dataclass(frozen=True)
class PolicyDefaults:
    code: str
    handling: Period
    extension_max: Period
    acceptance: Period | None = None
    recheck: Period = Period(30, CALENDAR_DAYS)


# Guangdong 12345 (2022) time limits, extension as Shandong's "complex matters ≤ 10 working days";
# 信访工作条例 2022 Art. 22 (acceptance 15 days), 34 (handling 60 + at most 30), 35–36 (30 + 30).
DEFAULT_POLICIES: dict[str, PolicyDefaults] = {
    "consultation": PolicyDefaults("gd12345.consultation", Period(2, WORKDAYS), Period(2, WORKDAYS)),
    "help": PolicyDefaults("gd12345.help", Period(10, WORKDAYS), Period(10, WORKDAYS)),
    "suggestion": PolicyDefaults("gd12345.suggestion", Period(10, WORKDAYS), Period(10, WORKDAYS)),
    "complaint": PolicyDefaults("gd12345.complaint", Period(15, WORKDAYS), Period(10, WORKDAYS)),
    "report": PolicyDefaults("gd12345.report", Period(15, WORKDAYS), Period(10, WORKDAYS)),
    "petition": PolicyDefaults("xinfang2022", Period(60, CALENDAR_DAYS), Period(30, CALENDAR_DAYS),
                               acceptance=Period(15, CALENDAR_DAYS)),
}


def policy_label(code: str, stage: str, period: Period, staged: bool) -> str:
    """What a case shows as its policy: gd12345.complaint.15wd, xinfang2022.acceptance.15d."""
    return f"{code}.{stage}.{period.label}" if staged else f"{code}.{period.label}"


def local_iso(moment: datetime | None) -> str | None:
    """ISO 8601 with the +08:00 offset: what citizens and handlers read deadlines in."""
    return moment.astimezone(workdays.SHANGHAI).isoformat() if moment else None


# --- contact --------------------------------------------------------------------------

_ID_NUMBER = re.compile(r"\d{17}[\dX]")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def normalize_id_number(raw: str) -> str:
    """An 18-digit resident ID number with a valid check digit (GB 11643), or `invalid_id_number`."""
    value = raw.strip().upper().replace(" ", "")
    if not _ID_NUMBER.fullmatch(value):
        raise invalid("invalid_id_number", "身份证号码格式不正确", {"field": "contact.id_number"})
    check = "10X98765432"[sum(int(c) * w for c, w in zip(value, _ID_WEIGHTS)) % 11]
    if value[-1] != check:
        raise invalid("invalid_id_number", "身份证号码校验位不正确", {"field": "contact.id_number"})
    return value


def check_contact(category: str, name: str | None, phone: str | None) -> tuple[str | None, str | None]:
    """Contact is required for complaints, reports and petitions; a given phone must be valid."""
    if category in CONTACT_REQUIRED and not (name and phone):
        raise invalid("contact_required", "投诉、举报和信访事项须留下联系人姓名和电话",
                      {"field": "contact", "category": category})
    return (name or None), (normalize_phone(phone) if phone else None)


def mask_id_number(value: str | None) -> str | None:
    return f"{value[:3]}{'*' * 11}{value[-4:]}" if value else value


def matter_key(title: str) -> str:
    """A title folded for duplicate detection: width, case, punctuation and spaces ignored."""
    folded = unicodedata.normalize("NFKC", title).lower()
    return "".join(ch for ch in folded if ch.isalnum())[:200]


# Numbers and addresses that identify a person: mobile and landline numbers, resident ID
# numbers, bank cards, e-mail. What leaves the service as free text (event titles, a featured
# answer) has them masked, whatever the citizen typed where.
_PERSONAL = re.compile(
    r"(?<![0-9A-Za-z])(?:\d{17}[\dXx]|\d{15,19}|1[3-9]\d{9}|0\d{2,3}-?\d{7,8})(?![0-9A-Za-z])"
    r"|[A-Za-z0-9._+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def redacted(text: str, names: tuple[str, ...] = ()) -> str:
    """`text` with personal numbers and e-mail addresses masked, and the given names replaced."""
    text = _PERSONAL.sub(lambda m: "*" * len(m.group()), text)
    for name in names:
        if name and len(name) >= 2:
            text = text.replace(name, name[0] + "某")
    return text


# Public coordinates are snapped to a 0.01° grid: about 1.1 km north-south and, at the
# province's latitudes (20°–26° N), about 1.0 km east-west; enough to put a matter on a
# district's map, not on a door.
COARSE_DEGREES = 2  # decimal places kept


def coarse(value: float | None) -> float | None:
    """A public coordinate: rounded to the 0.01° grid (None stays None)."""
    return None if value is None else round(value, COARSE_DEGREES)
