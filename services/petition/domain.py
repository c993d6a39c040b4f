"""Petition rules that do not depend on storage or transport: categories, SLA policies,
contact checks and masking, tracking codes."""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import date, datetime

from govmedia_kit import workdays
from govmedia_kit.errors import invalid

CATEGORIES = ("consultation", "help", "suggestion", "complaint", "report", "petition")
CHANNELS = ("web", "app", "comment", "hotline", "wechat", "weibo", "email")
STATUSES = ("received",)
# A complaint, a report or a formal petition has to be answerable and is handled for a person.
CONTACT_REQUIRED = ("complaint", "report", "petition")


# --- SLA policies ---------------------------------------------------------------------

@dataclass(frozen=True)
class SlaPolicy:
    code: str   # stored with the petition: the policy is fixed at creation
    stage: str
    days: int
    unit: str   # "workdays" | "calendar_days"


# Guangdong 12345 (2022) time limits; 信访工作条例 Art. 22 for formal petitions (calendar days).
POLICIES: dict[str, SlaPolicy] = {
    "consultation": SlaPolicy("gd12345.consultation.2wd", "handling", 2, "workdays"),
    "help": SlaPolicy("gd12345.help.10wd", "handling", 10, "workdays"),
    "suggestion": SlaPolicy("gd12345.suggestion.10wd", "handling", 10, "workdays"),
    "complaint": SlaPolicy("gd12345.complaint.15wd", "handling", 15, "workdays"),
    "report": SlaPolicy("gd12345.report.15wd", "handling", 15, "workdays"),
    "petition": SlaPolicy("xinfang2022.acceptance.15d", "acceptance", 15, "calendar_days"),
}


@dataclass(frozen=True)
class SlaClock:
    policy: SlaPolicy
    last_day: date
    due_at: datetime   # aware UTC: 24:00 Asia/Shanghai of the last day
    warn_at: datetime  # aware UTC


def start_clock(category: str, received_at: datetime) -> SlaClock:
    """The SLA of a new petition. Raises CalendarNotCovered rather than guess a deadline.

    Counting starts the day after the day of receipt (Asia/Shanghai). The warning is at
    24:00 of the working day before the last day, i.e. as the last working day begins,
    never earlier than receipt."""
    policy = POLICIES[category]
    received_on = workdays.local_date(received_at)
    if policy.unit == "workdays":
        last = workdays.add_workdays(received_on, policy.days)
    else:
        last = workdays.calendar_days_deadline(received_on, policy.days)
    warn_at = max(workdays.end_of_day(workdays.previous_workday(last)), received_at)
    return SlaClock(policy, last, workdays.end_of_day(last), warn_at)


def local_iso(moment: datetime | None) -> str | None:
    """ISO 8601 with the +08:00 offset: what citizens and handlers read deadlines in."""
    return moment.astimezone(workdays.SHANGHAI).isoformat() if moment else None


# --- contact --------------------------------------------------------------------------

_MOBILE = re.compile(r"1[3-9]\d{9}")
# Area code 010 / 02x (then 8 digits) or 0xxx (then 7–8 digits); local numbers never start with 0 or 1.
_LANDLINE = re.compile(r"0(?:10|2\d)[2-9]\d{7}|0[3-9]\d{2}[2-9]\d{6,7}")
_SEPARATORS = re.compile(r"[\s\-()（）]")


def normalize_phone(raw: str) -> str:
    """A mainland mobile (13812341234) or landline (020-12345678), or `invalid_phone`."""
    digits = _SEPARATORS.sub("", raw)
    for prefix in ("+86", "0086"):
        if digits.startswith(prefix):
            digits = digits[len(prefix):]
            if not digits.startswith("1"):
                digits = "0" + digits  # +86 20 … is the landline 020 …
            break
    if _MOBILE.fullmatch(digits):
        return digits
    if _LANDLINE.fullmatch(digits):
        area = 3 if digits[1] in "12" else 4
        return f"{digits[:area]}-{digits[area:]}"
    # The number itself is personal data: it is not echoed back.
    raise invalid("invalid_phone", "联系电话须为中国大陆手机号码或固定电话号码", {"field": "contact.phone"})


def check_contact(category: str, name: str | None, phone: str | None) -> tuple[str | None, str | None]:
    """Contact is required for complaints, reports and petitions; a given phone must be valid."""
    if category in CONTACT_REQUIRED and not (name and phone):
        raise invalid("contact_required", "投诉、举报和信访事项须留下联系人姓名和电话",
                      {"field": "contact", "category": category})
    return (name or None), (normalize_phone(phone) if phone else None)


def mask_phone(phone: str | None) -> str | None:
    """138****1234 for a mobile, 020-****5678 for a landline."""
    if not phone:
        return phone
    if "-" in phone:
        area, number = phone.split("-", 1)
        return f"{area}-{'*' * (len(number) - 4)}{number[-4:]}"
    return f"{phone[:3]}****{phone[-4:]}"


def mask_name(name: str | None) -> str | None:
    """张** : the family name only, so a supervisor can tell cases apart without knowing who."""
    if not name:
        return name
    return name[0] + "*" * max(len(name) - 1, 1)


# --- tracking codes ---------------------------------------------------------------------

# Crockford base32: no I, L, O, U, so a code read over the phone is not misheard.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_READ_AS = str.maketrans({"I": "1", "L": "1", "O": "0"})
TRACKING_CODE_LENGTH = 12  # 60 random bits


def new_tracking_code() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(TRACKING_CODE_LENGTH))


def normalize_tracking_code(raw: str) -> str | None:
    """Upper-case, hyphens and spaces dropped, look-alikes folded; None if it cannot be a code."""
    code = re.sub(r"[\s-]", "", raw).upper().translate(_READ_AS)
    if len(code) != TRACKING_CODE_LENGTH or any(c not in _ALPHABET for c in code):
        return None
    return code
