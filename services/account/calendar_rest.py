"""REST of the working-day calendar (calendar.py): the years and where each comes from, and
ops loading the State Council's notice of a year."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from govmedia_kit.auth import CurrentPrincipal
from govmedia_kit.runtime import RuntimeDep

from . import calendar
from .calendar_models import CalendarYearIn, CalendarYearPublic
from .models import Page

router = APIRouter(tags=["calendar"])
Year = Annotated[int, Path(ge=2004, le=2100)]


@router.get("/v1/calendar/years", response_model=Page)
async def list_years(rt: RuntimeDep, who: CurrentPrincipal,
                     since: Annotated[int | None, Query(alias="from", ge=2004, le=2100)] = None,
                     until: Annotated[int | None, Query(alias="to", ge=2004, le=2100)] = None):
    """Each year from `from` (default: last year) to the last a deadline may reach, with its
    source: `notice` (loaded by ops), `file` (the seed file), `library` (chinesecalendar) or
    `provisional` (the holiday law's days off only, recomputed once the notice is loaded)."""
    return Page(items=await calendar.list_years(rt, who, since, until))


@router.put("/v1/calendar/years/{year}", response_model=CalendarYearPublic)
async def put_year(rt: RuntimeDep, who: CurrentPrincipal, year: Year, body: CalendarYearIn):
    """Province-level ops load (or correct) a year from the State Council's notice: `holidays`
    the rest days on weekdays, `workdays` the make-up working days on weekends."""
    return await calendar.load_year(rt, who, year, body)


@router.get("/v1/calendar/years/{year}/versions", response_model=Page)
async def year_versions(rt: RuntimeDep, who: CurrentPrincipal, year: Year):
    """Every load of the year: which notice, who, when."""
    return Page(items=await calendar.year_history(rt, who, year))
