"""Content service tables (drafts, their revisions and attachments) and the shapes of its REST bodies.

Tables live in this service's own registry (its own metadata and migrations)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, Field as PField, HttpUrl, field_validator, model_validator
from sqlalchemy import JSON, BigInteger, Column, Text, UniqueConstraint, false
from sqlalchemy.orm import declared_attr, registry
from sqlmodel import Field, SQLModel

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.db import iso, new_id, utcnow
from govmedia_kit.audit import AuditTrail
from govmedia_kit.directory import UnitDirectory
from govmedia_kit.outbox import kit_tables
from govmedia_kit.reach import TargetReach


class Base(SQLModel, registry=registry()):
    pass


tables = kit_tables(Base.metadata)
directory = UnitDirectory(Base.metadata)  # unit → region path, for the reach of ops
# Region and account paths: a draft's targets stay within its unit's reach (govmedia_kit/reach.py).
reach = TargetReach(Base.metadata, directory)
# Append-only and hash-chained: one stream per draft (its id), every action with its actor,
# time and the fields before and after (govmedia_kit/audit.py).
trail = AuditTrail(Base.metadata)

# The same platform names as the account ledger (DESIGN.md §5).
Platform = Literal["weibo", "wechat", "douyin", "kuaishou", "toutiao", "bilibili", "app", "web", "other"]
UnitKind = Literal["government", "department", "institution", "party", "other"]  # as the account service's
Status = Literal["draft", "in_review", "approved", "rejected", "retracted"]
# The fields an author writes; a revision records which of them changed.
CONTENT_FIELDS = ("title", "subtitle", "body", "cover_url", "category", "source", "targets", "urgent", "publish_at")
# What a revision's snapshot holds: the author's fields and the attachments (added and
# removed by their own use cases, each a revision too).
SNAPSHOT_FIELDS = (*CONTENT_FIELDS, "attachments")
# Only these may be edited or (re)submitted: in review, approved or retracted items are frozen.
EDITABLE = ("draft", "rejected")


# --- tables -----------------------------------------------------------------

class Draft(Base, table=True):
    """A draft is the item: its id is the item id everywhere downstream (DESIGN.md §5)."""

    __tablename__ = "drafts"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    unit_id: str = Field(max_length=32, index=True)
    author_id: str = Field(max_length=32, index=True)
    version: int = 1
    status: str = Field(default="draft", max_length=20, index=True)
    title: str = Field(max_length=200)
    subtitle: str | None = Field(default=None, max_length=200)
    body: str = Field(sa_column=Column(Text, nullable=False))
    cover_url: str | None = Field(default=None, max_length=2000)
    category: str | None = Field(default=None, max_length=50)
    source: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    targets: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    urgent: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    publish_at: str | None = Field(default=None, max_length=40)  # ISO 8601 UTC; None: at once
    # The outcome of the last review round, kept for the author while the draft is rejected.
    review_comment: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    rejected_level: int | None = None
    rejected_by: str | None = Field(default=None, max_length=32)
    # Every decision of that round (level, reviewer_id, decision, comment, decided_at).
    review_decisions: list = Field(default_factory=list,
                                   sa_column=Column(JSON, nullable=False, server_default="[]"))
    submitted_at: datetime | None = None
    approved_at: datetime | None = Field(default=None, index=True)  # the cloud library sorts by it
    retract_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    retracted_by: str | None = Field(default=None, max_length=32)
    retracted_at: datetime | None = None
    # Images and video in the author's order: the public metadata of the draft's Attachment
    # rows (see AttachmentMeta), kept here so every snapshot and answer carries them.
    attachments: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]"))
    # A reprint (转载) keeps its source named and the original title (original_title set = a reprint).
    original_title: str | None = Field(default=None, max_length=200)
    reprint_of: str | None = Field(default=None, max_length=32, index=True)  # the cloud-library item reprinted
    reprint_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # times reprinted from the library
    clue_id: str | None = Field(default=None, max_length=32)  # the news clue (报料) it was written from
    # the citizen's case whose featured answer it was written from (one draft per case)
    petition_id: str | None = Field(default=None, max_length=32, unique=True, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # Bumped by every write: a writer that read an older row fails instead of overwriting
    # (SQLite ignores FOR UPDATE, so this is what serialises racing writers there).
    row_version: int = 1

    @declared_attr.directive
    def __mapper_args__(cls) -> dict:
        return {"version_id_col": cls.__table__.c.row_version}

    @property
    def is_reprint(self) -> bool:
        return self.original_title is not None

    def under_embargo(self, now: datetime) -> bool:
        """Its `publish_at` is still ahead: outside its unit nobody sees it yet (issue 16)."""
        return self.publish_at is not None and datetime.fromisoformat(self.publish_at.replace("Z", "+00:00")) > now

    def content(self) -> dict:
        return {name: getattr(self, name) for name in CONTENT_FIELDS}

    def stored_snapshot(self) -> dict:
        """What a revision stores: the author's fields and the attachments, as JSON values."""
        return {name: getattr(self, name) for name in SNAPSHOT_FIELDS}

    def snapshot(self) -> ev.ItemSnapshot:
        """The item as reviewers and dispatch see it: this exact version."""
        return ev.ItemSnapshot(
            item_id=self.id, version=self.version, unit_id=self.unit_id, author_id=self.author_id,
            title=self.title, subtitle=self.subtitle or "", body=self.body, cover_url=self.cover_url or "",
            category=self.category or "", source=source_message(self.source), targets=targets_message(self.targets),
            attachments=[attachment_message(a) for a in self.attachments], reprint_of=self.reprint_of or "",
            urgent=self.urgent, publish_at=self.publish_at or "",
        )


class Revision(Base, table=True):
    """One stored change of a draft's content: who, when, what changed, and the full result."""

    __tablename__ = "draft_revisions"
    # Two writers basing a change on the same version cannot both store it.
    __table_args__ = (UniqueConstraint("draft_id", "version", name="uq_draft_revisions_version"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    draft_id: str = Field(foreign_key="drafts.id", index=True, max_length=32)
    version: int
    editor_id: str = Field(max_length=32)
    changed: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    snapshot: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Attachment(Base, table=True):
    """A file of a draft (image or video). The bytes live in the attachment storage under
    `storage_key`; a cloud-library reprint copies the rows of the original and shares the keys."""

    __tablename__ = "attachments"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    draft_id: str = Field(foreign_key="drafts.id", index=True, max_length=32)
    kind: str = Field(max_length=10)  # image | video
    content_type: str = Field(max_length=50)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    sha256: str = Field(max_length=64)
    name: str = Field(max_length=200)
    storage_key: str = Field(max_length=200, index=True)
    created_by: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=utcnow)

    def meta(self) -> dict:
        """The public metadata, as the draft's `attachments` list and the snapshot carry it."""
        return {"id": self.id, "kind": self.kind, "content_type": self.content_type, "size": self.size,
                "sha256": self.sha256, "name": self.name, "url": attachment_url(self.id)}


def attachment_url(attachment_id: str) -> str:
    return f"/v1/attachments/{attachment_id}"


def attachment_message(meta: dict) -> ev.Attachment:
    return ev.Attachment(attachment_id=meta["id"], kind=meta["kind"], content_type=meta["content_type"],
                         size=meta["size"], sha256=meta["sha256"], name=meta["name"], url=meta["url"])


def source_message(source: dict | None) -> ev.Source | None:
    return ev.Source(name=source["name"], url=source.get("url") or "") if source else None


def targets_message(targets: dict) -> ev.Targets:
    return ev.Targets(all=targets.get("scope") == "all", regions=targets.get("regions", []),
                      platforms=targets.get("platforms", []), accounts=targets.get("accounts", []),
                      unit_kinds=targets.get("unit_kinds", []))


# --- request and response bodies ---------------------------------------------

class Strict(BaseModel):
    model_config = {"extra": "forbid", "str_strip_whitespace": True}



def _blank_is_none(value):
    return None if isinstance(value, str) and not value.strip() else value


class SourceIn(Strict):
    """Where reprinted content comes from (注明出处)."""

    name: str = PField(min_length=1, max_length=200)
    url: HttpUrl | None = None

    @field_validator("url", mode="before")
    @classmethod
    def blank_url_is_none(cls, value):
        return _blank_is_none(value)


class TargetsIn(Strict):
    """`{"scope": "all"}`, or any of regions / platforms / accounts / unit_kinds (at least one;
    kinds given together intersect, as dispatch's TargetRule documents)."""

    scope: Literal["all"] | None = None
    regions: list[str] = PField(default_factory=list, max_length=10_000)
    platforms: list[Platform] = PField(default_factory=list, max_length=20)
    accounts: list[str] = PField(default_factory=list, max_length=100_000)
    unit_kinds: list[UnitKind] = PField(default_factory=list, max_length=10)

    @model_validator(mode="after")
    def one_choice(self) -> "TargetsIn":
        chosen = self.regions or self.platforms or self.accounts or self.unit_kinds
        if self.scope == "all" and chosen:
            raise ValueError('"scope": "all" cannot be combined with regions, platforms, accounts or unit_kinds')
        if self.scope is None and not chosen:
            raise ValueError('give "scope": "all", or at least one of regions, platforms, accounts, unit_kinds')
        if any(not ident.strip() for ident in [*self.regions, *self.accounts]):
            raise ValueError("region and account ids must not be empty")
        return self

    def stored(self) -> dict:
        if self.scope == "all":
            return {"scope": "all"}
        pick = {"regions": self.regions, "platforms": self.platforms, "accounts": self.accounts,
                "unit_kinds": self.unit_kinds}
        return {name: list(dict.fromkeys(ids)) for name, ids in pick.items() if ids}


class DraftIn(Strict):
    """The author's fields: the body of POST /v1/drafts and of PUT (a full replacement)."""

    title: str = PField(min_length=1, max_length=200)
    subtitle: str | None = PField(default=None, max_length=200)
    body: str = PField(min_length=1, max_length=200_000)
    cover_url: HttpUrl | None = None
    category: str | None = PField(default=None, max_length=50)
    source: SourceIn | None = None
    targets: TargetsIn
    urgent: bool = False  # 突发: each review level runs against its deadline
    publish_at: AwareDatetime | None = None  # embargo: dispatch delivers nothing before it

    @field_validator("subtitle", "cover_url", "category", "publish_at", mode="before")
    @classmethod
    def blank_is_none(cls, value):
        """An empty optional field is an absent one (gRPC cannot tell them apart)."""
        return _blank_is_none(value)

    def stored(self) -> dict:
        """The fields as the draft stores them (plain JSON values)."""
        source = None
        if self.source:
            source = {"name": self.source.name, "url": str(self.source.url) if self.source.url else None}
        return {
            "title": self.title, "subtitle": self.subtitle, "body": self.body,
            "cover_url": str(self.cover_url) if self.cover_url else None, "category": self.category,
            "source": source, "targets": self.targets.stored(), "urgent": self.urgent,
            "publish_at": iso(self.publish_at) if self.publish_at else None,
        }


class DraftCreate(DraftIn):
    """POST /v1/drafts: the author's fields. A draft with a `source` is a reprint (转载), and
    `reprint: true` says so where the source is still missing (refused: a reprint names it).

    A reprint keeps the title it is created with (the original's): later changes may not
    remove the source (`reprint_source_required`) nor change the title (`reprint_title_locked`)."""

    reprint: bool = False


class RetractIn(Strict):
    reason: str = PField(min_length=1, max_length=1000)


class DraftPublic(BaseModel):
    id: str
    unit_id: str
    author_id: str
    version: int
    status: str
    title: str
    subtitle: str | None
    body: str
    cover_url: str | None
    category: str | None
    source: dict | None
    targets: dict
    urgent: bool
    publish_at: str | None
    attachments: list[dict]
    reprint: bool
    original_title: str | None
    reprint_of: str | None
    reprint_count: int
    clue_id: str | None
    petition_id: str | None = None
    review_comment: str | None
    rejected_level: int | None
    review_decisions: list[dict] = []
    retract_reason: str | None
    approved_at: str | None
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, d: Draft) -> "DraftPublic":
        return cls(
            id=d.id, unit_id=d.unit_id, author_id=d.author_id, version=d.version, status=d.status, **d.content(),
            attachments=d.attachments, reprint=d.is_reprint, original_title=d.original_title, reprint_of=d.reprint_of,
            reprint_count=d.reprint_count, clue_id=d.clue_id, petition_id=d.petition_id,
            review_comment=d.review_comment, rejected_level=d.rejected_level, review_decisions=d.review_decisions,
            retract_reason=d.retract_reason,
            approved_at=iso(d.approved_at), created_at=iso(d.created_at), updated_at=iso(d.updated_at),
        )


class AttachmentPublic(BaseModel):
    id: str
    draft_id: str
    kind: str
    content_type: str
    size: int
    sha256: str
    name: str
    url: str
    created_by: str
    created_at: str
    draft_version: int | None = None  # on upload: the draft's version after the change

    @classmethod
    def of(cls, a: Attachment, draft_version: int | None = None) -> "AttachmentPublic":
        return cls(id=a.id, draft_id=a.draft_id, kind=a.kind, content_type=a.content_type, size=a.size,
                   sha256=a.sha256, name=a.name, url=attachment_url(a.id), created_by=a.created_by,
                   created_at=iso(a.created_at), draft_version=draft_version)


class RevisionPublic(BaseModel):
    version: int
    editor_id: str
    created_at: str
    changed: list[str]
    fields: dict

    @classmethod
    def of(cls, r: Revision) -> "RevisionPublic":
        return cls(version=r.version, editor_id=r.editor_id, created_at=iso(r.created_at), changed=r.changed,
                   fields=r.snapshot)


class CharOp(BaseModel):
    op: str  # equal | replace | delete | insert (difflib)
    before_start: int
    before_end: int
    after_start: int
    after_end: int
    before: str
    after: str


class LinePair(BaseModel):
    before: str
    after: str
    chars: list[CharOp]


class LineHunk(BaseModel):
    op: str
    before_start: int
    before_end: int
    after_start: int
    after_end: int
    before: list[str]  # empty for equal hunks
    after: list[str]
    lines: list[LinePair]  # replace hunks: the n-th old line against the n-th new one


class FieldChange(BaseModel):
    field: str
    before: Any = None  # short fields (body: null)
    after: Any = None
    hunks: list[LineHunk] | None = None  # the body only


class DiffPublic(BaseModel):
    model_config = {"populate_by_name": True}

    draft_id: str
    from_version: int = PField(alias="from")
    to_version: int = PField(alias="to")
    from_editor_id: str
    from_created_at: str
    to_editor_id: str
    to_created_at: str
    changes: list[FieldChange]


class Page(BaseModel):
    items: list
    next_cursor: str | None = None
