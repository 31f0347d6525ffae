"""The SQLite engine's compact search index for AuditEvents: one narrow `audit_terms` table.

Every request writes an AuditEvent, so what one costs to index is paid on every request. In the
generic index tables an event's ~10 entries are rows of five tables with three to five B-trees
each. Here each token, string and reference entry is one *term*, a string that names the
parameter, the kind of entry and its value, and all terms live in one WITHOUT ROWID B-tree
keyed by (term, rid), and indexed by rid to probe one event's terms and to replace them: ~20
insertions into two trees (the second appends at its end) instead of ~40 into twenty. Dates,
composites and the other kinds keep the generic tables (AuditEvent has one date, `date`).

Terms (`\\x1f` separates the parts; a query on one parameter and kind is a range of terms):
- token:     `param c code system` (system empty when there is none; code empty when there is
             only a system) and `param t text` for the normalised display text;
- string:    `param N norm` when the value is already normalised (most are), otherwise
             `param n norm` and `param e exact`;
- reference: `@r id type param` and `@u url param` for an absolute URL: the value first, so
             that an event's `entity` and `patient` terms for the same Patient, and every
             event's terms for it, share a page (an event's references are its only terms
             that do not repeat from one event to the next, so their pages are most of what a
             commit writes).

Terms are written in two steps, because a term goes to a random place in the tree (an event's
Patient, its agent) and a commit writes every page it touched: a commit appends each event's
terms as one row of `audit_terms_staged` (a JSON array; one append, whatever the number of
terms), and `MERGE_STAGED` moves staged rows into `audit_terms` in sorted batches, so the pages
of terms that repeat are written once a batch instead of once a commit. The SQLite store merges
in the background once `MERGE_EVENTS` events are staged, and before any query that reads
`audit_terms`, so a search always sees every committed event. Staged rows are committed with
their events, so nothing is lost when a process stops before merging (another process's, or
the next run's, first search merges them).

Every query value travels as a bound parameter. Limits: a value containing `\\x1f` (no FHIR
code, id or normalised name does) can match a neighbouring term; and a reference parameter
searched without an id (`:missing`, a type alone) reads every event's reference terms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from fhir_server.search.model import (
    ANY,
    Chain,
    Has,
    Predicate,
    ReferenceEntry,
    ReferenceMatch,
    ResourceIndex,
    StringEntry,
    StringMatch,
    TokenEntry,
    TokenMatch,
)

TERM_TYPE = "AuditEvent"
ROW_DATE = "date"
"""AuditEvent.recorded. For the events this server builds it is the instant they were sealed,
their meta.lastUpdated (audit/chain.py), so the engine searches and sorts it on the resources
row's `last_updated` and writes no date rows (seven B-tree insertions, a third of the pages a
commit of events wrote). An event with another `recorded` (a client's) keeps its rows."""
TERM_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_terms (
    term TEXT NOT NULL, rid TEXT NOT NULL, PRIMARY KEY (term, rid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audit_terms_by_event ON audit_terms (rid);
CREATE TABLE IF NOT EXISTS audit_terms_staged (rid TEXT NOT NULL, terms TEXT NOT NULL);
"""
STAGED = "audit_terms_staged"
MERGE_STAGED = (
    # An event's repeated term is one row (OR IGNORE); sorted, each page is visited once.
    "INSERT OR IGNORE INTO audit_terms (term, rid) SELECT j.value, s.rid "
    "FROM audit_terms_staged s, json_each(s.terms) j WHERE s.rowid <= ? ORDER BY 1, 2",
    "DELETE FROM audit_terms_staged WHERE rowid <= ?",
)
"""Merge the staged rows up to a rowid (each statement takes it)."""
MERGE_CHUNK_ROWS = (
    "SELECT rowid, json_array_length(terms) FROM audit_terms_staged ORDER BY rowid LIMIT ?"
)
"""The first staged events and how many terms each has (to cut the next chunk)."""
MERGE_EVENTS = 512
"""Staged events after which the SQLite store merges them in the background."""
MERGE_CHUNK_EVENTS = 32
"""Events merged in one transaction: the write lock is released between chunks, so a merge
delays the writes queued behind it by one chunk (a few ms) rather than by all of them."""
MERGE_CHUNK_TERMS = 1024
"""Terms merged in one transaction at most (but always one event): a term costs about one
page written once `audit_terms` is large, and a search's event names a Patient per match. At
100,000 resources 32 events of pages of 20 Conditions (~45 terms each) took 15-35 ms, median
18; cut at 1,024 terms the median chunk took 12 ms for the same total (at 512: 9 ms, but
40 % more in total), and a page of 100 no longer makes chunks five times longer."""


def reads_terms(sql: str) -> bool:
    """Whether a query reads `audit_terms` (and must see the staged terms merged first)."""
    return "audit_terms" in sql
S = "\x1f"
_AFTER_S = "\x20"
_MAX_CHAR = "\U0010ffff"
TERM_ENTRIES = (TokenEntry, StringEntry, ReferenceEntry)
TERM_LEAVES = (TokenMatch, StringMatch, ReferenceMatch)


def date_on_row(index: ResourceIndex) -> bool:
    """Whether an AuditEvent's `date` is its `_lastUpdated`."""
    date = index.entries.get(ROW_DATE)
    return date is not None and date == index.entries.get("_lastUpdated")


def staged_row(id_: str, terms: list[str]) -> tuple[str, str]:
    """The `audit_terms_staged` row of event `id_`."""
    return id_, orjson.dumps(terms).decode()


def terms_of(param: str, entry: Any) -> Iterator[str]:
    """The terms of one index entry (a TERM_ENTRIES instance) of `param`."""
    if isinstance(entry, TokenEntry):
        if entry.code is not None or entry.system is not None:
            yield f"{param}{S}c{S}{entry.code or ''}{S}{entry.system or ''}"
        if entry.text:
            yield f"{param}{S}t{S}{entry.text}"
    elif isinstance(entry, StringEntry):
        if entry.norm == entry.exact:
            yield f"{param}{S}N{S}{entry.norm}"
        else:
            yield f"{param}{S}n{S}{entry.norm}"
            yield f"{param}{S}e{S}{entry.exact}"
    elif isinstance(entry, ReferenceEntry):
        if entry.id is not None:
            yield f"@r{S}{entry.id}{S}{entry.type or ''}{S}{param}"
        if entry.url is not None:
            yield f"@u{S}{entry.url}{S}{param}"


class Terms:
    """SQL conditions on `audit_terms` rows, collecting their bound parameters in `params`."""

    def __init__(self, params: list[Any], alias: Callable[[str], str]) -> None:
        self.params = params
        self.alias = alias

    def _exact(self, a: str, term: str) -> str:
        self.params.append(term)
        return f"{a}.term = ?"

    def _range(self, a: str, start: str, end: str | None = None) -> str:
        """Terms that begin with `start` (or lie in [start, end))."""
        self.params += [start, end if end is not None else start + _MAX_CHAR]
        return f"({a}.term >= ? AND {a}.term < ?)"

    def _kind(self, a: str, param: str, kind: str) -> str:
        return self._range(a, f"{param}{S}{kind}{S}", f"{param}{S}{kind}{_AFTER_S}")

    def _ends(self, a: str, suffix: str) -> str:
        self.params += [len(suffix), suffix]
        return f"substr({a}.term, -?) = ?"

    def condition(self, p: Predicate, a: str) -> str:
        """Row `a` is a term the leaf `p` (a TERM_LEAVES instance) matches."""
        if isinstance(p, TokenMatch):
            return self._token(p, a)
        if isinstance(p, StringMatch):
            return self._string(p, a)
        if isinstance(p, ReferenceMatch):
            return self._reference(p, a)
        raise TypeError(f"not a term predicate: {p!r}")

    def _token(self, p: TokenMatch, a: str) -> str:
        if p.text is not None:
            return self._range(a, f"{p.param}{S}t{S}{p.text}")
        head = f"{p.param}{S}c{S}"
        if p.code is not ANY and p.code is not None:
            if p.system is ANY:
                return self._range(a, f"{head}{p.code}{S}")
            return self._exact(a, f"{head}{p.code}{S}{p.system or ''}")
        # Any code, of the system asked for (or none); with no system either, any code at all.
        parts = [self._kind(a, p.param, "c")]
        if p.system is ANY:
            self.params += [len(head) + 1, f"{head}{S}"]
            parts.append(f"substr({a}.term, 1, ?) != ?")
        else:
            parts.append(self._ends(a, f"{S}{p.system or ''}"))
        return " AND ".join(parts)

    def _string(self, p: StringMatch, a: str) -> str:
        if p.mode == "exact":
            self.params += [f"{p.param}{S}e{S}{p.value}", f"{p.param}{S}N{S}{p.value}"]
            return f"{a}.term IN (?, ?)"
        if p.mode == "prefix":
            plain = self._range(a, f"{p.param}{S}N{S}{p.value}")
            return f"({plain} OR {self._range(a, f'{p.param}{S}n{S}{p.value}')})"
        plain, normalised = self._kind(a, p.param, "N"), self._kind(a, p.param, "n")
        self.params += [len(f"{p.param}{S}N{S}") + 1, p.value]
        return f"({plain} OR {normalised}) AND instr(substr({a}.term, ?), ?) > 0"

    def _reference(self, p: ReferenceMatch, a: str) -> str:
        if p.url is not None:
            return self._exact(a, f"@u{S}{p.url}{S}{p.param}")
        if p.id is not None and p.type is not None:
            return self._exact(a, f"@r{S}{p.id}{S}{p.type}{S}{p.param}")
        if p.id is not None:
            return f"{self._range(a, f'@r{S}{p.id}{S}')} AND {self._ends(a, f'{S}{p.param}')}"
        # Any reference of the parameter (of a type): a scan of every event's references.
        if p.type is not None:
            return f"{self._range(a, f'@r{S}')} AND {self._ends(a, f'{S}{p.type}{S}{p.param}')}"
        return (f"({self._range(a, f'@r{S}')} OR {self._range(a, f'@u{S}')}) "
                f"AND {self._ends(a, f'{S}{p.param}')}")

    def any_of(self, leaves: tuple[Predicate, ...], a: str) -> str:
        return " OR ".join(f"({self.condition(c, a)})" for c in leaves)

    def matching(self, leaves: tuple[Predicate, ...], outer: str) -> str:
        """Row `outer` (an AuditEvent) has a term one of `leaves` matches."""
        a = self.alias("m")
        return f"{outer}.id IN (SELECT {a}.rid FROM audit_terms {a} WHERE {self.any_of(leaves, a)})"

    def probe(self, leaves: tuple[Predicate, ...], outer: str) -> str:
        """The same as `matching`, checked for one row (in an AND driven by another part)."""
        a = self.alias("m")
        # By the event's own terms: a term condition that is a range (a code of any system,
        # a name prefix) would otherwise be scanned whole for every row.
        return (f"EXISTS (SELECT 1 FROM audit_terms {a} INDEXED BY audit_terms_by_event "
                f"WHERE {a}.rid = {outer}.id AND ({self.any_of(leaves, a)}))")

    def ids(self, leaves: tuple[Predicate, ...]) -> str:
        """The distinct ids of the events `leaves` match (to count them)."""
        return f"SELECT DISTINCT +a.rid FROM audit_terms a WHERE {self.any_of(leaves, 'a')}"

    def with_param(self, param: str, outer: str) -> str:
        """Row `outer` has a term of `param`."""
        a = self.alias("m")
        cond = self._range(a, f"{param}{S}", f"{param}{_AFTER_S}")
        references = self._reference(ReferenceMatch(param), a)
        return (f"{outer}.id IN (SELECT {a}.rid FROM audit_terms {a} WHERE {cond} "
                f"OR {references})")

    def chain(self, p: Chain, outer: str, inner: Callable[[str], str]) -> str:
        """An event's reference `p.param` points at a `p.target_type` that `p.where` holds for
        (`inner(alias)` renders it): for each such target, its exact term is looked up."""
        a, t = self.alias("m"), self.alias("t")
        self.params += [f"@r{S}", f"{S}{p.target_type}{S}{p.param}", p.target_type]
        return (f"{outer}.id IN (SELECT {a}.rid FROM resources {t} JOIN audit_terms {a} "
                f"ON {a}.term = ? || {t}.id || ? WHERE {t}.type = ? AND {t}.body IS NOT NULL "
                f"AND {inner(t)})")

    def has(self, p: Has, outer: str, rtype: str, inner: Callable[[str], str]) -> str:
        """Some event whose reference `p.param` points at row `outer` (of rtype) holds
        `p.where`."""
        a, s = self.alias("m"), self.alias("s")
        self.params += [f"@r{S}", f"{S}{rtype}{S}{p.param}", TERM_TYPE]
        return (f"EXISTS (SELECT 1 FROM audit_terms {a} WHERE {a}.term = ? || {outer}.id || ? "
                f"AND {a}.rid IN (SELECT {s}.id FROM resources {s} WHERE {s}.type = ? "
                f"AND {s}.body IS NOT NULL AND {inner(s)}))")


_FROM = "FROM {table} WHERE rtype = 'AuditEvent' AND grp IS NULL"
MOVE_TO_TERMS = tuple(
    f"INSERT OR IGNORE INTO audit_terms (term, rid) SELECT {term}, rid "
    f"{_FROM.format(table=table)} AND {where}"
    for table, term, where in (
        ("idx_token", "param || char(31) || 'c' || char(31) || coalesce(code, '') || char(31) "
         "|| coalesce(system, '')", "(code IS NOT NULL OR system IS NOT NULL)"),
        ("idx_token", "param || char(31) || 't' || char(31) || text", "text != ''"),
        ("idx_string", "param || char(31) || 'N' || char(31) || norm", "norm = exact"),
        ("idx_string", "param || char(31) || 'n' || char(31) || norm", "norm != exact"),
        ("idx_string", "param || char(31) || 'e' || char(31) || exact", "norm != exact"),
        ("idx_reference", "'@r' || char(31) || tid || char(31) || coalesce(ttype, '') "
         "|| char(31) || param", "tid IS NOT NULL"),
        ("idx_reference", "'@u' || char(31) || url || char(31) || param", "url IS NOT NULL"),
    )
) + tuple(
    f"DELETE {_FROM.format(table=table)}" for table in ("idx_token", "idx_string", "idx_reference")
)
"""A database written before `audit_terms` existed: its AuditEvents' rows of the generic
tables, turned into terms (run once, when the table is created)."""
