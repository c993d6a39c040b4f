"""Petition rules that do not depend on storage or transport: categories, SLA policies,
contact checks and masking, tracking codes."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from govmedia_kit import workdays
from govmedia_kit.errors import invalid
from govmedia_kit.public import normalize_phone

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

def check_contact(category: str, name: str | None, phone: str | None) -> tuple[str | None, str | None]:
    """Contact is required for complaints, reports and petitions; a given phone must be valid."""
    if category in CONTACT_REQUIRED and not (name and phone):
        raise invalid("contact_required", "投诉、举报和信访事项须留下联系人姓名和电话",
                      {"field": "contact", "category": category})
    return (name or None), (normalize_phone(phone) if phone else None)
