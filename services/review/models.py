"""Review service tables (reviews, their levels and machine findings; chains, lexicons,
delegations, the users read model, the audit trail) and the shapes of its REST bodies.

Tables live in this service's own registry (its own metadata and migrations)."""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, Field as PField, StrictBool, field_validator
from sqlalchemy import JSON, Column, LargeBinary, Text, UniqueConstraint
from sqlalchemy.orm import declared_attr, registry
from sqlmodel import Field, SQLModel

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.audit import AuditTrail
from govmedia_kit.db import as_utc, iso, new_id, utcnow
from govmedia_kit.directory import UnitDirectory
from govmedia_kit.outbox import kit_tables
from govmedia_kit.reach import TargetReach


class Base(SQLModel, registry=registry()):
    pass


tables = kit_tables(Base.metadata)
directory = UnitDirectory(Base.metadata)  # unit → region path, for the reach of ops
trail = AuditTrail(Base.metadata)  # append-only, hash-chained: one stream per item (its id)
# Region and account paths: the last level's approval checks the item's targets are within
# its unit's reach (govmedia_kit/reach.py).
reach = TargetReach(Base.metadata, directory)

# 三审制 by default: section head → deputy in charge → principal / editor-in-chief, all of the
# item's unit. A unit may configure its own chain (review_chains); a level is held by any of
# its roles, stored with each level as "role|role".
LEVEL_ROLES = {1: ("section_head",), 2: ("deputy",), 3: ("principal", "chief_editor")}
CHAIN_ROLES = ("section_head", "deputy", "principal", "chief_editor", "editor")
LAST_LEVEL_ROLES = ("principal", "chief_editor")  # the editor-in-chief answers for the content overall
DEFAULT_DEADLINE_MINUTES = 30.0  # an urgent item's time at each level (突发)
MAX_LEVELS = 5
MIN_LEVELS = 3  # 三审: a chain has at least the three levels (issue 16)
CHECKS = ("policy", "wording", "secrecy", "law")  # 政策关、文字关、保密关、法律关
State = Literal["in_review", "approved", "rejected", "superseded"]
ChainRole = Literal["section_head", "deputy", "principal", "chief_editor", "editor"]
Severity = Literal["blocking", "warning"]


# --- tables -----------------------------------------------------------------

class Review(Base, table=True):
    """One review round of one submitted version of an item."""

    __tablename__ = "reviews"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    item_id: str = Field(max_length=32, index=True)
    item_version: int
    unit_id: str = Field(max_length=32, index=True)
    author_id: str = Field(max_length=32)
    title: str = Field(max_length=200)
    state: str = Field(default="in_review", max_length=20, index=True)
    current_level: int = 1  # the level waiting for a decision; the deciding one once closed
    urgent: bool = False  # 突发: each level runs against its deadline
    chain_version: int = 0  # the unit's chain version the levels were copied from (0: the default)
    lexicon_version: int | None = None  # the lexicons the machine review ran with
    # The ItemSnapshot exactly as submitted (protobuf bytes), re-sent unchanged on approval.
    snapshot: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # Bumped by every write: of two racing decisions only one is stored (SQLite ignores FOR UPDATE).
    row_version: int = 1
    # The submission's trace (W3C traceparent): decisions continue it, so a push is one trace.
    trace_parent: str | None = Field(default=None, max_length=64)

    @declared_attr.directive
    def __mapper_args__(cls) -> dict:
        return {"version_id_col": cls.__table__.c.row_version}

    def item(self) -> ev.ItemSnapshot:
        item = ev.ItemSnapshot()
        item.ParseFromString(self.snapshot)
        return item


class ReviewLevel(Base, table=True):
    """One level of a review and its decision: the audit trail of who passed what."""

    __tablename__ = "review_levels"
    __table_args__ = (UniqueConstraint("review_id", "level", name="uq_review_levels_level"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    review_id: str = Field(foreign_key="reviews.id", index=True, max_length=32)
    level: int
    holder_role: str = Field(max_length=60)  # the roles that may decide it, "|"-separated
    decision: str | None = Field(default=None, max_length=10)  # approve | reject
    decided_by: str | None = Field(default=None, max_length=32, index=True)
    decided_at: datetime | None = None
    comment: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    checks: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # Copied from the chain when the review opened: a later change of the chain alters nothing here.
    deadline_minutes: float = DEFAULT_DEADLINE_MINUTES
    # Urgent items only, set when the level starts waiting: reminder due, then escalation due.
    due_at: datetime | None = None
    escalate_at: datetime | None = None
    reminded_at: datetime | None = None  # govmedia.review.level.overdue "reminder" emitted
    escalated_at: datetime | None = None  # … "escalated" emitted
    # A decision made by delegation: the absent holder and the delegation used.
    delegated_from: str | None = Field(default=None, max_length=32)
    delegation_id: str | None = Field(default=None, max_length=32)

    @property
    def holder_roles(self) -> tuple[str, ...]:
        return tuple(self.holder_role.split("|"))


class ReviewEditor(Base, table=True):
    """Someone who wrote or edited the reviewed version (ItemSnapshot.editor_ids, the author
    included): they decide no level of this review, in person or through a delegate."""

    __tablename__ = "review_editors"
    review_id: str = Field(foreign_key="reviews.id", primary_key=True, max_length=32)
    user_id: str = Field(primary_key=True, max_length=32)


class ReviewFinding(Base, table=True):
    """One finding of the machine review (机审) of a review's snapshot. A blocking one stops
    approval until a holder of the last level overrides it as a false positive."""

    __tablename__ = "review_findings"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    review_id: str = Field(foreign_key="reviews.id", index=True, max_length=32)
    category: str = Field(max_length=100)
    severity: str = Field(max_length=10)  # blocking | warning
    field: str = Field(max_length=40)
    start: int
    end: int
    matched: str = Field(sa_column=Column(Text, nullable=False))
    rule: str = Field(sa_column=Column(Text, nullable=False))
    suggestion: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    overridden_by: str | None = Field(default=None, max_length=32)
    overridden_at: datetime | None = None
    override_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    overridden_for: str | None = Field(default=None, max_length=32)  # the delegator, when by delegation

    @property
    def open_blocking(self) -> bool:
        return self.severity == "blocking" and self.overridden_at is None


class ReviewChain(Base, table=True):
    """One version of a unit's review chain; the newest is in force for reviews opened after it."""

    __tablename__ = "review_chains"
    __table_args__ = (UniqueConstraint("unit_id", "version", name="uq_review_chains_version"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    unit_id: str = Field(max_length=32, index=True)
    version: int
    levels: list = Field(sa_column=Column(JSON, nullable=False))  # [{"roles": [...], "deadline_minutes": n}]
    changed_by: str = Field(max_length=32)
    changed_at: datetime = Field(default_factory=utcnow)


class LexiconVersion(Base, table=True):
    """One version of the machine review's lexicons (the whole LexiconData JSON)."""

    __tablename__ = "lexicon_versions"
    version: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    data: dict = Field(sa_column=Column(JSON, nullable=False))
    created_by: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=utcnow)
    change: str = Field(default="", max_length=500)  # what this version changed, for people


class Delegation(Base, table=True):
    """A reviewer's role lent to a colleague of the same unit for a time window (while away)."""

    __tablename__ = "delegations"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    unit_id: str = Field(max_length=32, index=True)
    delegator_id: str = Field(max_length=32, index=True)
    to_user_id: str = Field(max_length=32, index=True)
    role: str = Field(max_length=20)
    starts_at: datetime
    ends_at: datetime
    reason: str = Field(sa_column=Column(Text, nullable=False))
    created_by: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None
    revoked_by: str | None = Field(default=None, max_length=32)


class KnownUser(Base, table=True):
    """The users read model, fed by govmedia.account.user.upserted: who is in which unit."""

    __tablename__ = "users"
    user_id: str = Field(primary_key=True, max_length=32)
    unit_id: str = Field(max_length=32, index=True)
    username: str = Field(default="", max_length=100)
    display_name: str = Field(default="", max_length=100)
    roles: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    active: bool = True
    updated_at: datetime = Field(default_factory=utcnow)


@dataclass
class ReviewView:
    """A review with its levels and findings: what the use cases hand to the transports."""

    review: Review
    levels: list[ReviewLevel]
    findings: list[ReviewFinding] = dc_field(default_factory=list)


# --- request and response bodies ---------------------------------------------

class Strict(BaseModel):
    model_config = {"extra": "forbid", "str_strip_whitespace": True}


class ChecksIn(Strict):
    """The four gates; a missing one counts as not passed."""

    policy: StrictBool = False
    wording: StrictBool = False
    secrecy: StrictBool = False
    law: StrictBool = False

    def failed(self) -> list[str]:
        return [name for name in CHECKS if not getattr(self, name)]


class DecisionIn(Strict):
    decision: Literal["approve", "reject"]
    comment: str = PField(default="", max_length=5000)
    checks: ChecksIn | None = None


class LevelPublic(BaseModel):
    level: int
    holder_role: str
    decision: str | None
    decided_by: str | None
    decided_at: str | None
    comment: str | None
    checks: dict | None
    deadline_minutes: float
    due_at: str | None
    reminded_at: str | None
    escalated_at: str | None
    delegated_from: str | None  # decided by delegation: the absent holder
    delegation_id: str | None

    @classmethod
    def of(cls, lv: ReviewLevel) -> "LevelPublic":
        return cls(level=lv.level, holder_role=lv.holder_role, decision=lv.decision, decided_by=lv.decided_by,
                   decided_at=iso(lv.decided_at), comment=lv.comment, checks=lv.checks,
                   deadline_minutes=lv.deadline_minutes, due_at=iso(lv.due_at), reminded_at=iso(lv.reminded_at),
                   escalated_at=iso(lv.escalated_at), delegated_from=lv.delegated_from, delegation_id=lv.delegation_id)


class FindingPublic(BaseModel):
    id: str
    category: str
    severity: str
    field: str
    start: int
    end: int
    matched: str
    rule: str
    suggestion: str | None
    overridden: bool
    overridden_by: str | None
    overridden_at: str | None
    override_reason: str | None
    overridden_for: str | None

    @classmethod
    def of(cls, f: ReviewFinding) -> "FindingPublic":
        return cls(id=f.id, category=f.category, severity=f.severity, field=f.field, start=f.start, end=f.end,
                   matched=f.matched, rule=f.rule, suggestion=f.suggestion, overridden=f.overridden_at is not None,
                   overridden_by=f.overridden_by, overridden_at=iso(f.overridden_at),
                   override_reason=f.override_reason, overridden_for=f.overridden_for)


class ReviewPublic(BaseModel):
    id: str
    item_id: str
    item_version: int
    unit_id: str
    author_id: str
    title: str
    state: str
    current_level: int
    urgent: bool
    chain_version: int
    levels: list[LevelPublic]
    lexicon_version: int | None
    findings: list[FindingPublic]
    blocking_open: int  # blocking findings not overridden: approval is refused while any remains
    item: dict
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, view: ReviewView) -> "ReviewPublic":
        r, levels = view.review, view.levels
        return cls(
            id=r.id, item_id=r.item_id, item_version=r.item_version, unit_id=r.unit_id, author_id=r.author_id,
            title=r.title, state=r.state, current_level=r.current_level, urgent=r.urgent,
            chain_version=r.chain_version,
            levels=[LevelPublic.of(lv) for lv in sorted(levels, key=lambda lv: lv.level)],
            lexicon_version=r.lexicon_version, findings=[FindingPublic.of(f) for f in view.findings],
            blocking_open=sum(1 for f in view.findings if f.open_blocking),
            item=item_dict(r.item()), created_at=iso(r.created_at), updated_at=iso(r.updated_at),
        )


def item_dict(item: ev.ItemSnapshot) -> dict:
    """The snapshot as reviewers read it over REST (the same shape as content's drafts)."""
    t = item.targets
    targets = {"scope": "all"} if t.all else {
        name: list(getattr(t, name)) for name in ("regions", "platforms", "accounts") if getattr(t, name)}
    return {
        "item_id": item.item_id, "version": item.version, "unit_id": item.unit_id, "author_id": item.author_id,
        "title": item.title, "subtitle": item.subtitle or None, "body": item.body,
        "cover_url": item.cover_url or None, "category": item.category or None,
        "source": {"name": item.source.name, "url": item.source.url or None} if item.HasField("source") else None,
        "targets": targets, "urgent": item.urgent, "reprint_of": item.reprint_of or None,
        "attachments": [{"attachment_id": a.attachment_id, "kind": a.kind, "content_type": a.content_type,
                         "size": a.size, "sha256": a.sha256, "name": a.name, "url": a.url} for a in item.attachments],
    }


class Page(BaseModel):
    items: list
    next_cursor: str | None = None


# --- chains ---------------------------------------------------------------------

class ChainLevelIn(Strict):
    roles: list[ChainRole] = PField(min_length=1, max_length=len(CHAIN_ROLES))
    deadline_minutes: float = PField(default=DEFAULT_DEADLINE_MINUTES, gt=0, le=7 * 24 * 60)

    @field_validator("roles")
    @classmethod
    def _distinct(cls, roles: list[str]) -> list[str]:
        if len(set(roles)) != len(roles):
            raise ValueError("a role appears twice in one level")
        return roles


class ChainIn(Strict):
    levels: list[ChainLevelIn] = PField(min_length=1, max_length=MAX_LEVELS)


class ChainLevelPublic(BaseModel):
    level: int
    roles: list[str]
    deadline_minutes: float


class ChainPublic(BaseModel):
    unit_id: str
    version: int  # 0: the default chain, never changed
    is_default: bool
    levels: list[ChainLevelPublic]
    changed_by: str | None
    changed_at: str | None


# --- findings and lexicons ------------------------------------------------------

class OverrideIn(Strict):
    reason: str = PField(min_length=2, max_length=2000)  # why it is a false positive, in writing


class TermsIn(Strict):
    """Add terms to (with a severity, or null for the category's) and remove terms from one category."""

    category: str = PField(min_length=1, max_length=100)
    add: dict[str, Severity | None] = PField(default_factory=dict, max_length=10_000)
    remove: list[str] = PField(default_factory=list, max_length=10_000)

    @field_validator("add")
    @classmethod
    def _terms(cls, add: dict) -> dict:
        cleaned = {term.strip(): sev for term, sev in add.items()}
        if "" in cleaned or any(len(t) > 100 for t in cleaned):
            raise ValueError("terms are 1 to 100 characters")
        return cleaned


class LexiconPublic(BaseModel):
    version: int
    data: dict
    created_by: str
    created_at: str
    change: str


class LexiconVersionPublic(BaseModel):
    version: int
    created_by: str
    created_at: str
    change: str


# --- delegations ----------------------------------------------------------------

class DelegationIn(Strict):
    to_user_id: str = PField(min_length=1, max_length=32)
    role: ChainRole
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    reason: str = PField(min_length=2, max_length=500)
    # On someone's behalf (the unit's principal only); the caller when absent.
    from_user_id: str | None = PField(default=None, min_length=1, max_length=32)


class DelegationPublic(BaseModel):
    id: str
    unit_id: str
    from_user_id: str
    to_user_id: str
    role: str
    starts_at: str
    ends_at: str
    reason: str
    created_by: str
    created_at: str
    revoked_at: str | None
    revoked_by: str | None
    active: bool  # inside its window and not revoked, now

    @classmethod
    def of(cls, d: Delegation, now: datetime) -> "DelegationPublic":
        active = d.revoked_at is None and as_utc(d.starts_at) <= now < as_utc(d.ends_at)
        return cls(id=d.id, unit_id=d.unit_id, from_user_id=d.delegator_id, to_user_id=d.to_user_id, role=d.role,
                   starts_at=iso(d.starts_at), ends_at=iso(d.ends_at), reason=d.reason, created_by=d.created_by,
                   created_at=iso(d.created_at), revoked_at=iso(d.revoked_at), revoked_by=d.revoked_by,
                   active=active)
