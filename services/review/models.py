"""Review service tables (reviews and their three levels) and the shapes of its REST bodies.

Tables live in this service's own registry (its own metadata and migrations)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field as PField, StrictBool
from sqlalchemy import JSON, Column, LargeBinary, Text, UniqueConstraint
from sqlalchemy.orm import declared_attr, registry
from sqlmodel import Field, SQLModel

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.db import iso, new_id, utcnow
from govmedia_kit.directory import UnitDirectory
from govmedia_kit.outbox import kit_tables


class Base(SQLModel, registry=registry()):
    pass


tables = kit_tables(Base.metadata)
directory = UnitDirectory(Base.metadata)  # unit → region path, for the reach of ops

# 三审制: section head → deputy in charge → principal / editor-in-chief, all of the item's unit.
# A level is held by any of its roles; stored with each level as "role|role".
LEVEL_ROLES = {1: ("section_head",), 2: ("deputy",), 3: ("principal", "chief_editor")}
CHECKS = ("policy", "wording", "secrecy", "law")  # 政策关、文字关、保密关、法律关
State = Literal["in_review", "approved", "rejected", "superseded"]


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
    # The ItemSnapshot exactly as submitted (protobuf bytes), re-sent unchanged on approval.
    snapshot: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # Bumped by every write: of two racing decisions only one is stored (SQLite ignores FOR UPDATE).
    row_version: int = 1

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

    @property
    def holder_roles(self) -> tuple[str, ...]:
        return tuple(self.holder_role.split("|"))
    decision: str | None = Field(default=None, max_length=10)  # approve | reject
    decided_by: str | None = Field(default=None, max_length=32, index=True)
    decided_at: datetime | None = None
    comment: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    checks: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))


@dataclass
class ReviewView:
    """A review with its levels: what the use cases hand to the transports."""

    review: Review
    levels: list[ReviewLevel]


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


class ReviewPublic(BaseModel):
    id: str
    item_id: str
    item_version: int
    unit_id: str
    author_id: str
    title: str
    state: str
    current_level: int
    levels: list[LevelPublic]
    item: dict
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, view: ReviewView) -> "ReviewPublic":
        r, levels = view.review, view.levels
        return cls(
            id=r.id, item_id=r.item_id, item_version=r.item_version, unit_id=r.unit_id, author_id=r.author_id,
            title=r.title, state=r.state, current_level=r.current_level,
            levels=[LevelPublic(level=lv.level, holder_role=lv.holder_role, decision=lv.decision,
                                decided_by=lv.decided_by, decided_at=iso(lv.decided_at), comment=lv.comment,
                                checks=lv.checks) for lv in sorted(levels, key=lambda lv: lv.level)],
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
        "targets": targets,
    }


class Page(BaseModel):
    items: list
    next_cursor: str | None = None
