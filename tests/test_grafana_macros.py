"""The macro expander reproduces Grafana's PostgreSQL macros and SQL variable interpolation.

Expected strings follow Grafana's own macro tests (pkg/tsdb/grafana-postgresql-datasource) and
the SQL datasource's ``interpolateVariable``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from grafana.macros import (
    ALL,
    MacroError,
    TemplateVar,
    expand,
    expand_macros,
    interpolate_variables,
    parse_interval,
)

FROM = datetime(2018, 4, 12, 18, 0, tzinfo=timezone.utc)
TO = FROM + timedelta(minutes=5)


def ex(sql: str, start: datetime = FROM, end: datetime = TO) -> str:
    return expand_macros(sql, start, end)


def test_time_column_macros():
    assert ex("select $__time(time_column)") == 'select time_column AS "time"'
    assert ex("select min($__time(time_column))") == 'select min(time_column AS "time")'
    assert ex("select $__timeEpoch(t)") == 'select extract(epoch from t) as "time"'


def test_time_filter_and_bounds_are_rfc3339():
    assert ex("WHERE $__timeFilter(time_column)") == (
        "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'")
    assert ex("select $__timeFrom()") == "select '2018-04-12T18:00:00Z'"
    assert ex("select $__timeTo()") == "select '2018-04-12T18:05:00Z'"


def test_fractional_seconds_and_old_dates():
    start = datetime(1960, 2, 1, 7, 0, 0, 500_000, tzinfo=timezone.utc)
    end = datetime(1980, 2, 3, 8, 0, 0, 500_000, tzinfo=timezone.utc)
    assert ex("WHERE $__timeFilter(c)", start, end) == (
        "WHERE c BETWEEN '1960-02-01T07:00:00.5Z' AND '1980-02-03T08:00:00.5Z'")
    assert ex("select $__unixEpochFilter(time)", start, end) == (
        f"select time >= {int(start.timestamp() // 1)} AND time <= {int(end.timestamp() // 1)}")


def test_non_utc_bounds_are_converted_to_utc():
    cet = timezone(timedelta(hours=1))
    assert ex("$__timeFrom()", FROM.astimezone(cet)) == "'2018-04-12T18:00:00Z'"
    with pytest.raises(ValueError):
        ex("$__timeFrom()", FROM.replace(tzinfo=None))


def test_time_group_and_alias():
    assert ex("SELECT $__timeGroup(time_column,'5m')") == "SELECT floor(extract(epoch from time_column)/300)*300"
    assert ex("SELECT $__timeGroupAlias(time_column,'5m')") == (
        'SELECT floor(extract(epoch from time_column)/300)*300 AS "time"')
    assert ex("$__timeGroup(time_column , '5m')") == "floor(extract(epoch from time_column)/300)*300"
    assert ex("SELECT $__timeGroupAlias(d, 1d)") == 'SELECT floor(extract(epoch from d)/86400)*86400 AS "time"'


def test_time_group_pre_5_3_compatibility():
    # directly followed by a comma: Grafana adds the alias; otherwise it does not
    assert ex("SELECT $__timeGroup(time_column,'5m'), value") == (
        'SELECT floor(extract(epoch from time_column)/300)*300 AS "time", value')
    assert ex("SELECT $__timeGroup(time_column,'5m') as time, value") == (
        "SELECT floor(extract(epoch from time_column)/300)*300 as time, value")


def test_unix_epoch_macros():
    f, t = int(FROM.timestamp()), int(TO.timestamp())
    assert ex("select $__unixEpochFilter(time)") == f"select time >= {f} AND time <= {t}"
    assert ex("select $__unixEpochNanoFilter(time)") == (
        f"select time >= {f * 10**9} AND time <= {t * 10**9}")
    assert ex("select $__unixEpochFrom(), $__unixEpochTo()") == f"select {f}, {t}"
    assert ex("select $__unixEpochNanoFrom()") == f"select {f * 10**9}"
    assert ex("SELECT $__unixEpochGroup(time_column+time_adjustment,'5m')") == (
        "SELECT floor((time_column+time_adjustment)/300)*300")
    assert ex("SELECT $__unixEpochGroupAlias(c,'20ms')") == 'SELECT floor((c)/0.02)*0.02 AS "time"'


def test_intervals():
    assert parse_interval("'5m'") == 300
    assert parse_interval("1d") == 86400
    assert parse_interval("1w") == 604800
    assert parse_interval("1h30m") == 5400
    assert parse_interval("20ms") == 0.02
    for bad in ("", "5", "1M", "1y", "five minutes", "5m junk"):
        with pytest.raises(MacroError):
            parse_interval(bad)


def test_errors_like_grafana():
    with pytest.raises(MacroError, match="unknown macro"):
        ex("select $__nope(x)")
    with pytest.raises(MacroError, match="missing time column"):
        ex("WHERE $__timeFilter()")
    with pytest.raises(MacroError, match="needs time column and interval"):
        ex("SELECT $__timeGroup(t)")


def test_interval_variables():
    sql = "SELECT $__interval_ms, '$__interval'"
    assert expand_macros(sql, FROM, TO, timedelta(minutes=5)) == "SELECT 300000, '5m'"
    assert expand_macros(sql, FROM, TO, timedelta(days=1)) == "SELECT 86400000, '1d'"


# --------------------------------------------------------------------------- template variables


def test_multi_value_variables_are_quoted_lists():
    dept = TemplateVar("department", ["Cardiology", "Internal Medicine"])
    assert interpolate_variables("department IN ($department)", [dept]) == (
        "department IN ('Cardiology','Internal Medicine')")
    assert interpolate_variables("x IN (${department})", [dept]) == "x IN ('Cardiology','Internal Medicine')"
    assert interpolate_variables("x IN ([[department]])", [dept]) == "x IN ('Cardiology','Internal Medicine')"


def test_all_expands_to_every_option_or_the_custom_all_value():
    options = ["Emergency", "Surgery"]
    assert interpolate_variables("d IN ($d)", [TemplateVar("d", ALL, options)]) == "d IN ('Emergency','Surgery')"
    assert interpolate_variables("d IN ($d)", [TemplateVar("d", [ALL], options)]) == "d IN ('Emergency','Surgery')"
    custom = TemplateVar("d", ALL, options, all_value="d")
    assert interpolate_variables("d IN ($d)", [custom]) == "d IN (d)"


def test_single_value_variable_is_inserted_raw_with_quotes_doubled():
    f = TemplateVar("facility", "O'Hare", multi=False, include_all=False)
    assert interpolate_variables("facility_id = '$facility'", [f]) == "facility_id = 'O''Hare'"
    # a multi/include-all variable with one string value is quoted as a literal
    g = TemplateVar("facility", "F01", multi=True)
    assert interpolate_variables("facility_id IN ($facility)", [g]) == "facility_id IN ('F01')"
    assert interpolate_variables("n > $n", [TemplateVar("n", 3)]) == "n > 3"


def test_injection_is_quoted_away():
    evil = TemplateVar("d", ["x'); DROP TABLE alerts; --"])
    assert interpolate_variables("d IN ($d)", [evil]) == "d IN ('x''); DROP TABLE alerts; --')"


def test_formats_and_unknown_names():
    d = TemplateVar("d", ["a", "b"])
    assert interpolate_variables("${d:csv}", [d]) == "a,b"
    assert interpolate_variables("${d:singlequote}", [d]) == "'a','b'"
    with pytest.raises(MacroError):
        interpolate_variables("${d:glob}", [d])
    # macros and unknown variables are left for the next step
    assert interpolate_variables("$__timeFilter(t) AND $other", [d]) == "$__timeFilter(t) AND $other"


def test_expand_does_variables_then_macros():
    sql = "SELECT $__timeGroupAlias(t, 1d) FROM x WHERE d IN ($department) AND $__timeFilter(t)"
    got = expand(sql, FROM, TO, [TemplateVar("department", ["A"])])
    assert got == ("SELECT floor(extract(epoch from t)/86400)*86400 AS \"time\" FROM x "
                   "WHERE d IN ('A') AND t BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'")
