"""SQLite side of search: index tables, index rows of a resource, predicates rendered as SQL.

Every query value travels as a bound parameter; table and column names come only from the
fixed mappings below, so no query text can become SQL. Each leaf predicate becomes
`alias.id IN (SELECT rid FROM idx_<kind> ...)`, which SQLite drives from the index table's
(rtype, param, value) index and then looks resources up by primary key.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fhir_server.fhirtime import instant_before
from fhir_server.search.model import (
    ANY,
    And,
    Chain,
    Composite,
    CompositeEntry,
    DateEntry,
    Has,
    IdMatch,
    Missing,
    Not,
    NumberEntry,
    Or,
    Predicate,
    QuantityEntry,
    RangeMatch,
    ReferenceEntry,
    ReferenceMatch,
    ResourceIndex,
    SortKey,
    SortValue,
    StringEntry,
    StringMatch,
    TokenEntry,
    TokenMatch,
    UriEntry,
    UriMatch,
)
from fhir_server.search.ranges import range_conditions
from fhir_server.store.sqlite_terms import (
    ROW_DATE,
    STAGED,
    TERM_ENTRIES,
    TERM_LEAVES,
    TERM_SCHEMA,
    TERM_TYPE,
    Terms,
    date_on_row,
    staged_row,
    terms_of,
)

# Indexes serve their searches only. The value indexes (`_q`, `_t`) end with `rid` and the
# per-resource ones (`_rp`) with the values searched most (codes, references, names, dates),
# so that a search driven by one and probing another never reads the table rows: at 20,000
# resources an Observation by patient and code took 0.42 ms instead of 1.6. Partial indexes
# (`WHERE ... IS NOT NULL`) leave out the rows that search can never find (a code without
# display text, a reference without an absolute URL), which are most rows, so writes skip
# those B-tree insertions.
INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS idx_string (
    rtype TEXT NOT NULL, rid TEXT NOT NULL, param TEXT NOT NULL, grp INTEGER,
    norm TEXT, exact TEXT);
CREATE INDEX IF NOT EXISTS idx_string_q ON idx_string (rtype, param, norm, rid);
CREATE INDEX IF NOT EXISTS idx_string_rp ON idx_string (rtype, rid, param, norm);
CREATE TABLE IF NOT EXISTS idx_token (
    rtype TEXT NOT NULL, rid TEXT NOT NULL, param TEXT NOT NULL, grp INTEGER,
    system TEXT, code TEXT, text TEXT);
CREATE INDEX IF NOT EXISTS idx_token_q ON idx_token (rtype, param, code, system, rid);
CREATE INDEX IF NOT EXISTS idx_token_s ON idx_token (rtype, param, system);
CREATE INDEX IF NOT EXISTS idx_token_t ON idx_token (rtype, param, text) WHERE text IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_token_rp ON idx_token (rtype, rid, param, code, system);
CREATE TABLE IF NOT EXISTS idx_date (
    rtype TEXT NOT NULL, rid TEXT NOT NULL, param TEXT NOT NULL, grp INTEGER,
    low TEXT, high TEXT);
CREATE INDEX IF NOT EXISTS idx_date_q ON idx_date (rtype, param, low, high, rid);
CREATE INDEX IF NOT EXISTS idx_date_h ON idx_date (rtype, param, high);
CREATE INDEX IF NOT EXISTS idx_date_rp ON idx_date (rtype, rid, param, low, high);
CREATE TABLE IF NOT EXISTS idx_number (
    rtype TEXT NOT NULL, rid TEXT NOT NULL, param TEXT NOT NULL, grp INTEGER,
    low REAL, high REAL);
CREATE INDEX IF NOT EXISTS idx_number_q ON idx_number (rtype, param, low, high);
CREATE INDEX IF NOT EXISTS idx_number_rp ON idx_number (rtype, rid, param);
CREATE TABLE IF NOT EXISTS idx_quantity (
    rtype TEXT NOT NULL, rid TEXT NOT NULL, param TEXT NOT NULL, grp INTEGER,
    low REAL, high REAL, system TEXT, code TEXT, unit TEXT);
CREATE INDEX IF NOT EXISTS idx_quantity_q ON idx_quantity (rtype, param, code, low);
CREATE INDEX IF NOT EXISTS idx_quantity_rp ON idx_quantity (rtype, rid, param);
CREATE TABLE IF NOT EXISTS idx_reference (
    rtype TEXT NOT NULL, rid TEXT NOT NULL, param TEXT NOT NULL, grp INTEGER,
    ttype TEXT, tid TEXT, url TEXT);
CREATE INDEX IF NOT EXISTS idx_reference_q ON idx_reference (rtype, param, tid, ttype, rid);
CREATE INDEX IF NOT EXISTS idx_reference_t ON idx_reference (ttype, tid, rtype, param, rid);
CREATE INDEX IF NOT EXISTS idx_reference_u ON idx_reference (rtype, param, url)
    WHERE url IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_reference_rp ON idx_reference (rtype, rid, param, tid, ttype);
CREATE TABLE IF NOT EXISTS idx_uri (
    rtype TEXT NOT NULL, rid TEXT NOT NULL, param TEXT NOT NULL, grp INTEGER, value TEXT);
CREATE INDEX IF NOT EXISTS idx_uri_q ON idx_uri (rtype, param, value);
CREATE INDEX IF NOT EXISTS idx_uri_rp ON idx_uri (rtype, rid, param);
CREATE TABLE IF NOT EXISTS sort_keys (
    rtype TEXT NOT NULL, rid TEXT NOT NULL, param TEXT NOT NULL, asc, desc,
    PRIMARY KEY (rtype, rid, param));
CREATE INDEX IF NOT EXISTS sort_keys_asc ON sort_keys (rtype, param, asc);
CREATE INDEX IF NOT EXISTS sort_keys_desc ON sort_keys (rtype, param, desc);
""" + TERM_SCHEMA

# Entry class -> (table, the entry's values in column order).
_TABLES: dict[type, tuple[str, tuple[str, ...]]] = {
    StringEntry: ("idx_string", ("norm", "exact")),
    TokenEntry: ("idx_token", ("system", "code", "text")),
    DateEntry: ("idx_date", ("low", "high")),
    NumberEntry: ("idx_number", ("low", "high")),
    QuantityEntry: ("idx_quantity", ("low", "high", "system", "code", "unit")),
    ReferenceEntry: ("idx_reference", ("ttype", "tid", "url")),
    UriEntry: ("idx_uri", ("value",)),
}
INDEX_TABLES = tuple(table for table, _ in _TABLES.values())
# Predicate class -> its table; for RangeMatch the kind picks it.
_RANGE_TABLES = {"date": "idx_date", "number": "idx_number", "quantity": "idx_quantity"}
_MAX_CHAR = "\U0010ffff"
COLUMNS = "r.type, r.id, r.version, r.last_updated, r.method, r.body"


def _entry_values(entry: Any) -> tuple[Any, ...]:
    if isinstance(entry, DateEntry):
        return (entry.start, entry.end)
    if isinstance(entry, ReferenceEntry):
        return (entry.type, entry.id, entry.url)
    return tuple(getattr(entry, f) for f in entry.__slots__)


ON_RESOURCE_ROW = "_lastUpdated"
"""Searched and sorted on `resources.last_updated` (indexed by type), so it has no index rows:
seven B-tree insertions fewer on every write."""


def index_rows(type_: str, id_: str, index: ResourceIndex) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """(table, row) for every entry; composite components go under `code$i`, grouped by `grp`;
    AuditEvents' tokens, strings and references are terms (sqlite_terms.py)."""
    terms: list[str] | None = [] if type_ == TERM_TYPE else None
    skipped = (
        (ON_RESOURCE_ROW, ROW_DATE) if terms is not None and date_on_row(index)
        else (ON_RESOURCE_ROW,)
    )
    for param, entries in index.entries.items():
        if param in skipped:
            continue
        for grp, entry in enumerate(entries):
            if terms is not None and isinstance(entry, TERM_ENTRIES):
                terms += terms_of(param, entry)
            elif isinstance(entry, CompositeEntry):
                for position, component in enumerate(entry.components):
                    for part in component:
                        table = _TABLES[type(part)][0]
                        yield table, (type_, id_, f"{param}${position}", grp, *_entry_values(part))
            else:
                yield _TABLES[type(entry)][0], (type_, id_, param, None, *_entry_values(entry))
    for param, (asc, desc) in index.sort.items():
        if param not in skipped:
            yield "sort_keys", (type_, id_, param, asc, desc)
    if terms:
        yield STAGED, staged_row(id_, terms)


def insert_sql(table: str, width: int) -> str:
    return f"INSERT INTO {table} VALUES ({', '.join('?' * width)})"


@dataclass
class Sql:
    """A fragment of SQL and its bound parameters, built up while rendering."""

    params: list[Any] = field(default_factory=list)
    _names: Iterator[int] = field(default_factory=itertools.count)

    def alias(self, prefix: str) -> str:
        return f"{prefix}{next(self._names)}"


def _leaf_table(p: Predicate) -> str:
    if isinstance(p, StringMatch):
        return "idx_string"
    if isinstance(p, TokenMatch):
        return "idx_token"
    if isinstance(p, RangeMatch):
        return _RANGE_TABLES[p.kind]
    if isinstance(p, ReferenceMatch):
        return "idx_reference"
    if isinstance(p, UriMatch):
        return "idx_uri"
    raise TypeError(f"not a leaf predicate: {p!r}")


LEAVES = (StringMatch, TokenMatch, RangeMatch, ReferenceMatch, UriMatch)


def _prefix(sql: Sql, column: str, value: str) -> str:
    sql.params += [value, value + _MAX_CHAR]
    return f"({column} >= ? AND {column} < ?)"


def _leaf_condition(p: Predicate, a: str, sql: Sql) -> str:
    """Condition on one row `a` of the leaf's table (not its rtype/param)."""
    if isinstance(p, StringMatch):
        if p.mode == "exact":
            sql.params.append(p.value)
            return f"{a}.exact = ?"
        if p.mode == "contains":
            sql.params.append(p.value)
            return f"instr({a}.norm, ?) > 0"
        return _prefix(sql, f"{a}.norm", p.value)
    if isinstance(p, TokenMatch):
        return _token_condition(p, a, sql)
    if isinstance(p, RangeMatch):
        return _range_condition(p, a, sql)
    if isinstance(p, ReferenceMatch):
        if p.url is not None:
            sql.params.append(p.url)
            return f"{a}.url = ?"
        parts = []
        if p.id is not None:
            sql.params.append(p.id)
            parts.append(f"{a}.tid = ?")
        if p.type is not None:
            sql.params.append(p.type)
            parts.append(f"{a}.ttype = ?")
        return " AND ".join(parts) or "1"
    if isinstance(p, UriMatch):
        if p.mode == "below":
            return _prefix(sql, f"{a}.value", p.value)
        sql.params.append(p.value)
        if p.mode == "above":
            return f"instr(?, {a}.value) = 1"
        return f"{a}.value = ?"
    raise TypeError(f"not a leaf predicate: {p!r}")


def _token_condition(p: TokenMatch, a: str, sql: Sql) -> str:
    if p.text is not None:
        return _prefix(sql, f"{a}.text", p.text)
    parts = []
    if p.code is not ANY and p.code is not None:
        sql.params.append(p.code)
        parts.append(f"{a}.code = ?")
    if p.system is None:
        parts.append(f"{a}.system IS NULL")
    elif p.system is not ANY:
        sql.params.append(p.system)
        parts.append(f"{a}.system = ?")
    return " AND ".join(parts) or f"{a}.code IS NOT NULL"


def _range_condition(p: RangeMatch, a: str, sql: Sql) -> str:
    condition = _range_alternatives(p, sql, lambda column, value: (f"{a}.{column}", value))
    if p.kind == "quantity":
        if p.code is not None:
            sql.params.append(p.code)
            condition += f" AND {a}.code = ?"
        if p.system is not None:
            sql.params.append(p.system)
            condition += f" AND {a}.system = ?"
        if p.unit is not None:
            sql.params += [p.unit, p.unit]
            condition += f" AND ({a}.unit = ? OR {a}.code = ?)"
    return condition


def _range_alternatives(
    p: RangeMatch, sql: Sql, term: Callable[[str, Any], tuple[str, Any]]
) -> str:
    """range_conditions(p) as SQL; `term` maps (low|high, value) to (column, value)."""
    alternatives = []
    for conjunction in range_conditions(p):
        terms = []
        for bound, op, value in conjunction:
            column, value = term(bound, value)
            sql.params.append(value)
            terms.append(f"{column} {op} ?")
        alternatives.append("(" + " AND ".join(terms) + ")")
    return "(" + " OR ".join(alternatives) + ")"


def _last_updated_terms(outer: str) -> Callable[[str, Any], tuple[str, Any]]:
    """A stored lastUpdated t is the range [t, t + 1 µs): `high op v` is `t + 1µs op v`, which
    for microsecond instants is `t op v - 1µs`."""

    def term(bound: str, value: Any) -> tuple[str, Any]:
        return f"{outer}.last_updated", value if bound == "low" else instant_before(value)

    return term


def _selectivity(p: Predicate) -> int:
    """Rough rank of how few rows a predicate selects (lower: fewer), to pick the one that
    drives an AND: equality on ids and references first, open ranges last."""
    if isinstance(p, IdMatch):
        return 0
    if isinstance(p, ReferenceMatch):
        return 1 if p.id is not None or p.url is not None else 6
    if isinstance(p, TokenMatch):
        return 2 if p.code not in (ANY, None) and p.text is None else 5
    if isinstance(p, StringMatch | UriMatch):
        return 3 if p.mode == "exact" else 4
    if isinstance(p, Or):
        return max(_selectivity(c) for c in p.predicates) + 1 if p.predicates else 0
    if isinstance(p, Composite | Chain | Has):
        return 4
    return 7


def _render_and(p: And, outer: str, rtype: str, sql: Sql) -> str:
    """The most selective child drives (`id IN (...)`); the others are probed per row with
    EXISTS on the (rtype, rid, param) index, instead of each building its full id list.

    When the driver is one index table's rows, the probes on one parameter go inside its
    sub-select, on its `rid`: a candidate that fails them is dropped before its resource row
    is looked up (an Observation by patient and code: a patient's hundreds of observations,
    a few of them with the code)."""
    children = sorted(p.predicates, key=_selectivity)
    driver, rest = children[0], children[1:]
    on_index = [(c, _probe_on_index(c, rtype)) for c in rest]
    inside = [found for _, found in on_index if found]
    driving = _probe_on_index(driver, rtype)
    if driving and inside:
        parts = [_leaves(driving[2], outer, rtype, sql, inside)]
        rest = [c for c, found in on_index if not found]
    else:
        parts = [render(driver, outer, rtype, sql)]
    parts += [_probe(c, outer, rtype, sql) for c in rest]
    return "(" + " AND ".join(parts) + ")"


def _probe_on_index(p: Predicate, rtype: str) -> tuple[str, str, tuple[Predicate, ...]] | None:
    """(table, param, leaves) when p is answered by one index table's rows alone (not an
    AuditEvent's terms)."""
    return None if _term_leaves(p, rtype) else _one_parameter(p, rtype)


def _one_parameter(p: Predicate, rtype: str) -> tuple[str, str, tuple[Predicate, ...]] | None:
    """(table, param, leaves) when p is a leaf, or an OR of leaves, on one parameter: those
    can be answered by one pass over one index table."""
    leaves = p.predicates if isinstance(p, Or) else (p,)
    if not leaves or not all(isinstance(c, LEAVES) for c in leaves):
        return None
    keys = {(_leaf_table(c), c.param) for c in leaves}  # type: ignore[union-attr]
    if len(keys) != 1:
        return None
    ((table, param),) = keys
    on_row = (ON_RESOURCE_ROW, ROW_DATE) if rtype == TERM_TYPE else (ON_RESOURCE_ROW,)
    return None if param in on_row else (table, param, leaves)


def _any_of(leaves: tuple[Predicate, ...], a: str, sql: Sql) -> str:
    return " OR ".join(f"({_leaf_condition(c, a, sql)})" for c in leaves)


def _term_leaves(p: Predicate, rtype: str) -> tuple[Predicate, ...] | None:
    """The leaves of p, when p is an AuditEvent's token, string or reference leaf or an OR of
    them (on any parameters): those are answered from its terms."""
    if rtype != TERM_TYPE:
        return None
    leaves = p.predicates if isinstance(p, Or) else (p,)
    return leaves if leaves and all(isinstance(c, TERM_LEAVES) for c in leaves) else None


def _terms(sql: Sql) -> Terms:
    return Terms(sql.params, sql.alias)


def _probe(p: Predicate, outer: str, rtype: str, sql: Sql) -> str:
    if terms := _term_leaves(p, rtype):
        return _terms(sql).probe(terms, outer)
    found = _one_parameter(p, rtype)
    if found is None:
        return render(p, outer, rtype, sql)
    return _exists(found, f"{outer}.id", rtype, sql)


def _exists(
    found: tuple[str, str, tuple[Predicate, ...]], rid: str, rtype: str, sql: Sql
) -> str:
    """Whether the resource whose id is the SQL expression `rid` has a row matching leaves."""
    table, param, leaves = found
    a = sql.alias("e")
    sql.params += [rtype, param]
    return (f"EXISTS (SELECT 1 FROM {table} {a} INDEXED BY {table}_rp WHERE {a}.rtype = ? "
            f"AND {a}.rid = {rid} AND {a}.param = ? AND ({_any_of(leaves, a, sql)}))")


def index_only_count(p: Predicate | None, rtype: str, sql: Sql) -> str | None:
    """The matching ids read from one index table alone, when `p` is leaves on one parameter
    (to count): index rows exist only for current, non-deleted resources, so the resources
    table is not needed."""
    if p is None:
        return None
    if terms := _term_leaves(p, rtype):
        return _terms(sql).ids(terms)
    found = _one_parameter(p, rtype)
    if found is None:
        return None
    table, param, leaves = found
    sql.params += [rtype, param]
    # `+a.rid`: an expression, so the planner cannot pick the (rtype, rid, param) index to
    # deliver distinct rids in order, and keeps to the index of the condition.
    return (f"SELECT DISTINCT +a.rid FROM {table} a WHERE a.rtype = ? AND a.param = ? "
            f"AND ({_any_of(leaves, 'a', sql)})")


def render(p: Predicate, outer: str, rtype: str, sql: Sql) -> str:
    """SQL condition that holds for row `outer` of `resources` (of type rtype) when p holds."""
    if isinstance(p, And):
        return _render_and(p, outer, rtype, sql)
    if isinstance(p, Or):
        return _render_or(p, outer, rtype, sql)
    if isinstance(p, Not):
        return f"NOT {render(p.predicate, outer, rtype, sql)}"
    if isinstance(p, IdMatch):
        sql.params += list(p.ids)
        return f"{outer}.id IN ({', '.join('?' * len(p.ids))})"
    if isinstance(p, Missing) and p.param == ON_RESOURCE_ROW:
        return "0" if p.missing else "1"  # every resource has one
    if isinstance(p, Missing) and rtype == TERM_TYPE and p.param == ROW_DATE:
        return "0" if p.missing else "1"  # every AuditEvent has one (recorded is required)
    if isinstance(p, Missing):
        return _present(p, outer, rtype, sql)
    if isinstance(p, RangeMatch) and p.param == ON_RESOURCE_ROW:
        return _range_alternatives(p, sql, _last_updated_terms(outer))
    if isinstance(p, RangeMatch) and rtype == TERM_TYPE and p.param == ROW_DATE:
        return _date_on_row(p, outer, rtype, sql)
    if isinstance(p, LEAVES):
        return _leaves((p,), outer, rtype, sql)
    if isinstance(p, Composite):
        return _composite(p, outer, rtype, sql)
    if isinstance(p, Chain):
        return _chain(p, outer, rtype, sql)
    if isinstance(p, Has):
        return _has(p, outer, rtype, sql)
    raise TypeError(f"unknown predicate {p!r}")


def _present(p: Missing, outer: str, rtype: str, sql: Sql) -> str:
    """`:missing`: whether the resource has a value for the parameter. A sortable parameter
    has a sort key exactly then; a composite has none, but its instances are rows of its first
    component (`code$0`); an AuditEvent's tokens, strings and references are terms."""
    sql.params += [rtype, p.param]
    present = [f"{outer}.id IN (SELECT rid FROM sort_keys WHERE rtype = ? AND param = ?)"]
    components = " UNION ALL ".join(
        f"SELECT rid FROM {table} WHERE rtype = ? AND param = ?" for table in INDEX_TABLES
    )
    sql.params += [rtype, f"{p.param}$0"] * len(INDEX_TABLES)
    present.append(f"{outer}.id IN ({components})")
    if rtype == TERM_TYPE:
        present.append(_terms(sql).with_param(p.param, outer))
    condition = "(" + " OR ".join(present) + ")"
    return f"NOT {condition}" if p.missing else condition


def _date_on_row(p: RangeMatch, outer: str, rtype: str, sql: Sql) -> str:
    """An AuditEvent's date: its lastUpdated when it has no date rows of its own (the events
    the server builds, sqlite_terms.ROW_DATE), else its rows."""
    on_row = _range_alternatives(p, sql, _last_updated_terms(outer))
    sql.params += [rtype, p.param]
    own_rows = "SELECT rid FROM idx_date WHERE rtype = ? AND param = ?"
    return (f"(({on_row} AND {outer}.id NOT IN ({own_rows})) "
            f"OR {_leaves((p,), outer, rtype, sql)})")


def _leaves(
    preds: tuple[Predicate, ...],
    outer: str,
    rtype: str,
    sql: Sql,
    probes: Sequence[tuple[str, str, tuple[Predicate, ...]]] = (),
) -> str:
    """Leaves on one parameter and table, OR-ed inside one sub-select (one index range scan),
    with `probes` (`_probe_on_index`) on each of its rows."""
    if terms := _term_leaves(Or(preds), rtype):
        return _terms(sql).matching(terms, outer)
    a = sql.alias("x")
    table = _leaf_table(preds[0])
    sql.params += [rtype, preds[0].param]  # type: ignore[union-attr]
    conditions = [f"({_any_of(preds, a, sql)})"]
    conditions += [_exists(found, f"{a}.rid", rtype, sql) for found in probes]
    return (f"{outer}.id IN (SELECT {a}.rid FROM {table} {a} "
            f"WHERE {a}.rtype = ? AND {a}.param = ? AND {' AND '.join(conditions)})")


def _render_or(p: Or, outer: str, rtype: str, sql: Sql) -> str:
    if not p.predicates:
        return "0"  # no alternative holds
    if terms := _term_leaves(p, rtype):
        return _terms(sql).matching(terms, outer)
    found = _one_parameter(p, rtype)
    if found is not None:
        return _leaves(found[2], outer, rtype, sql)
    return "(" + " OR ".join(render(c, outer, rtype, sql) for c in p.predicates) + ")"


def _composite(p: Composite, outer: str, rtype: str, sql: Sql) -> str:
    """Rows of the components' tables joined on the same element instance (rid, grp)."""
    aliases = [sql.alias("c") for _ in p.components]
    first = aliases[0]
    alternatives = [c.predicates if isinstance(c, Or) else (c,) for c in p.components]
    tables = [_leaf_table(alts[0]) for alts in alternatives]
    joins = [f"{tables[0]} {first}"]
    # Bound parameters follow the text: the JOIN conditions come before the WHERE clause.
    for position, (table, a) in enumerate(zip(tables, aliases, strict=True)):
        if position:
            sql.params.append(f"{p.param}${position}")
            joins.append(
                f"JOIN {table} {a} ON {a}.rtype = {first}.rtype AND {a}.rid = {first}.rid "
                f"AND {a}.grp = {first}.grp AND {a}.param = ?"
            )
    sql.params += [rtype, f"{p.param}$0"]
    conditions = [f"{first}.rtype = ? AND {first}.param = ?"]
    for alts, a in zip(alternatives, aliases, strict=True):
        conditions.append("(" + " OR ".join(f"({_leaf_condition(c, a, sql)})" for c in alts) + ")")
    return (f"{outer}.id IN (SELECT {first}.rid FROM {' '.join(joins)} "
            f"WHERE {' AND '.join(conditions)})")


def _chain(p: Chain, outer: str, rtype: str, sql: Sql) -> str:
    if rtype == TERM_TYPE:
        return _terms(sql).chain(p, outer, lambda t: render(p.where, t, p.target_type, sql))
    x, t = sql.alias("x"), sql.alias("t")
    sql.params += [rtype, p.param, p.target_type, p.target_type]
    inner = render(p.where, t, p.target_type, sql)
    return (
        f"{outer}.id IN (SELECT {x}.rid FROM idx_reference {x} WHERE {x}.rtype = ? "
        f"AND {x}.param = ? AND {x}.ttype = ? AND {x}.tid IN (SELECT {t}.id FROM resources "
        f"{t} WHERE {t}.type = ? AND {t}.body IS NOT NULL AND {inner}))"
    )


def _has(p: Has, outer: str, rtype: str, sql: Sql) -> str:
    if p.source_type == TERM_TYPE:
        return _terms(sql).has(p, outer, rtype, lambda s: render(p.where, s, TERM_TYPE, sql))
    x, s = sql.alias("x"), sql.alias("s")
    sql.params += [p.source_type, p.param, rtype, p.source_type]
    inner = render(p.where, s, p.source_type, sql)
    return (
        f"{outer}.id IN (SELECT {x}.tid FROM idx_reference {x} WHERE {x}.rtype = ? "
        f"AND {x}.param = ? AND {x}.ttype = ? AND {x}.rid IN (SELECT {s}.id FROM resources "
        f"{s} WHERE {s}.type = ? AND {s}.body IS NOT NULL AND {inner}))"
    )


def sort_expression(key: SortKey, rtype: str, sql: Sql) -> str:
    if key.param == "_id":
        return "r.id"
    if key.param == "_lastUpdated":
        return "r.last_updated"
    sql.params.append(key.param)
    column = "desc" if key.descending else "asc"
    expression = (
        f"(SELECT s.{column} FROM sort_keys s WHERE s.rtype = r.type AND s.rid = r.id "
        "AND s.param = ?)"
    )
    if rtype == TERM_TYPE and key.param == ROW_DATE:
        return f"coalesce({expression}, r.last_updated)"
    return expression


def keyset_condition(
    expressions: list[str],
    descending: list[bool],
    after: tuple[SortValue, ...],
    id_descending: bool,
    sql: Sql,
) -> str:
    """Rows after the keyset position `after` (sort values..., id) in ORDER BY keys..., id.

    `expressions` are plain column names (the sort values selected as k0, k1, ...), so they can
    be repeated here without repeating bound parameters. NULL (no value) sorts first ascending
    and last descending, as in SQLite and MongoDB.
    """
    alternatives = []
    for i, (expr, desc) in enumerate(zip(expressions, descending, strict=True)):
        value = after[i]
        if value is None and desc:
            continue  # nothing sorts after NULL descending
        equal = _equal_prefix(expressions[:i], after[:i], sql)
        if value is None:
            step = f"{expr} IS NOT NULL"
        else:
            sql.params.append(value)
            step = f"({expr} < ? OR {expr} IS NULL)" if desc else f"{expr} > ?"
        alternatives.append(" AND ".join([*equal, step]))
    equal = _equal_prefix(expressions, after[:-1], sql)
    sql.params.append(after[-1])
    alternatives.append(" AND ".join([*equal, "id < ?" if id_descending else "id > ?"]))
    return "(" + " OR ".join(f"({a})" for a in alternatives) + ")"


def _equal_prefix(expressions: list[str], values: tuple[SortValue, ...], sql: Sql) -> list[str]:
    terms = []
    for expr, value in zip(expressions, values, strict=True):
        if value is None:
            terms.append(f"{expr} IS NULL")
        else:
            sql.params.append(value)
            terms.append(f"{expr} = ?")
    return terms
