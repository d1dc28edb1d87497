//! A file-backed on-call source: a rota in TOML.
//!
//! # Format
//!
//! ```toml
//! [[schedules]]
//! id = "payments-primary"          # what the catalogue's `auto_approve.on_call` names
//! time_zone = "Europe/Berlin"      # IANA name: the schedule's wall clock
//!
//! # Weekly shifts: from one hand-over to the next, every week. Days are
//! # Mon..Sun (or Monday..Sunday), times HH:MM on the schedule's wall clock.
//! [[schedules.weekly]]
//! from = "Mon 09:00"
//! until = "Thu 09:00"
//! subjects = ["alice"]             # exact subject ids (OIDC `sub`)
//!
//! [[schedules.weekly]]
//! from = "Thu 09:00"
//! until = "Mon 09:00"              # earlier in the week than `from`: ends the next week
//! subjects = ["bob"]
//!
//! # Every other week: the occurrences that start in the week of
//! # `first_week` (a date), and every `every_weeks`-th week before and after.
//! [[schedules.weekly]]
//! from = "Sat 08:00"
//! until = "Sat 20:00"
//! subjects = ["carol"]
//! every_weeks = 2
//! first_week = "2026-12-07"
//!
//! # Dated overrides: from `from` until `until` (local date and time), these
//! # subjects and nobody from a weekly shift are on call.
//! [[schedules.overrides]]
//! from = "2026-12-24 18:00"
//! until = "2026-12-27 09:00"
//! subjects = ["dave"]
//! time_zone = "America/New_York"   # optional on any shift: another wall clock for this one
//! ```
//!
//! Every shift is a half-open range: at the hand-over instant the next
//! person is on call and the previous one is not. Shifts may overlap
//! (a primary and a shadow); whoever is in any shift that holds an
//! instant is on call. While any override of a schedule holds, only the
//! overrides that hold count.
//!
//! # Time zones and daylight saving
//!
//! A wall-clock time is turned into an instant in its zone for each week
//! separately, so "Mon 09:00 Europe/Berlin" is 08:00 UTC in winter and
//! 07:00 UTC in summer, and the shift that spans the change is an hour
//! shorter or longer. A time that does not exist that day (in the gap when
//! clocks go forward) is taken as the same time after the gap (02:30
//! becomes 03:30); a time that exists twice (when clocks go back) is the
//! first of the two. These are RFC 5545's (and Temporal's "compatible")
//! rules, the ones calendar tools use for recurring events.
//!
//! The zone rules are `jiff`'s bundled copy of the IANA database: the same
//! on every host (a Lambda image without `/usr/share/zoneinfo`, a test
//! machine), updated with the crate. `jiff` over `chrono-tz`: it was
//! already in the dependency tree, and it makes the gap and fold handling
//! above an explicit, named choice rather than an ambiguity left to each
//! caller.
//!
//! # Validation
//!
//! The whole file is checked at load, and every error names the line and
//! the field (`schedules[0].weekly[1].until`): unknown keys, unknown time
//! zones, malformed days or times, an empty or zero-length shift, an
//! override that ends before it starts, subject ids that are not valid ids,
//! duplicate schedule ids and schedules without any shift.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use jiff::civil::{Date, DateTime as CivilDateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use serde::Deserialize;
use toml::Spanned;

use super::OnCallSource;
use crate::error::{ConfigError, Error, Result};
use crate::types::PrincipalId;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRota {
    #[serde(default)]
    schedules: Vec<RawSchedule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    id: Spanned<String>,
    time_zone: Spanned<String>,
    #[serde(default)]
    weekly: Vec<RawWeekly>,
    #[serde(default)]
    overrides: Vec<RawOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeekly {
    from: Spanned<String>,
    until: Spanned<String>,
    subjects: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    time_zone: Option<Spanned<String>>,
    #[serde(default)]
    every_weeks: Option<Spanned<i64>>,
    #[serde(default)]
    first_week: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    from: Spanned<String>,
    until: Spanned<String>,
    subjects: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    time_zone: Option<Spanned<String>>,
}

/// A weekly shift, compiled.
#[derive(Debug, Clone)]
struct Weekly {
    tz: TimeZone,
    /// Days after Monday (0..7) and the wall-clock time of the start.
    from: (i64, Time),
    /// Days after the start week's Monday (0..14) and the time of the end.
    until: (i64, Time),
    subjects: BTreeSet<String>,
    every: i64,
    /// Days since 1970-01-01 of the Monday of `first_week` (0 when every week).
    anchor: i64,
}

#[derive(Debug, Clone)]
struct Override {
    from: Timestamp,
    until: Timestamp,
    subjects: BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct Schedule {
    weekly: Vec<Weekly>,
    overrides: Vec<Override>,
}

/// An on-call rota loaded from TOML (see the [module docs](self)):
/// validated once at load, answered from memory.
#[derive(Debug, Clone)]
pub struct Rota {
    schedules: BTreeMap<String, Schedule>,
}

/// Where errors point: the file name and its text (for line numbers).
struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, offset: usize, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Rota {
            file: self.file.to_string(),
            line: crate::policy::catalogue::line_of(self.text, offset),
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn toml(&self, e: &toml::de::Error) -> ConfigError {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let message = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        // `unknown field `x`, expected ...` and `missing field `x``: name the key.
        let field = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|p| message.strip_prefix(p))
            .and_then(|rest| rest.split_once('`'))
            .map(|(key, _)| key.to_string())
            .unwrap_or_else(|| "toml".into());
        self.err(offset, &field, message)
    }

    fn zone(
        &self,
        field: &str,
        name: &Spanned<String>,
    ) -> std::result::Result<TimeZone, ConfigError> {
        TimeZone::get(name.get_ref().trim()).map_err(|_| {
            self.err(
                name.span().start,
                field,
                format!(
                    "unknown time zone `{}`: use an IANA name such as `Europe/Berlin`",
                    name.get_ref()
                ),
            )
        })
    }

    fn subjects(
        &self,
        field: &str,
        subjects: &Spanned<Vec<Spanned<String>>>,
    ) -> std::result::Result<BTreeSet<String>, ConfigError> {
        if subjects.get_ref().is_empty() {
            return Err(self.err(
                subjects.span().start,
                field,
                "name at least one subject id, or remove the shift",
            ));
        }
        subjects
            .get_ref()
            .iter()
            .map(|s| {
                PrincipalId::new(s.get_ref().as_str())
                    .map(|id| id.as_str().to_string())
                    .map_err(|e| self.err(s.span().start, field, e.to_string()))
            })
            .collect()
    }
}

/// `Mon 09:00` → (days after Monday, time).
fn parse_weekly_time(text: &str) -> Option<(i64, Time)> {
    let (day, time) = text.trim().split_once(' ')?;
    let days = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let day = day.to_ascii_lowercase();
    let offset = days
        .iter()
        .position(|d| *d == day || (day.len() == 3 && d.starts_with(&day)))?;
    Some((i64::try_from(offset).ok()?, parse_hh_mm(time.trim())?))
}

/// `09:00`: two-digit hours 00..=23 and minutes 00..=59.
fn parse_hh_mm(text: &str) -> Option<Time> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    Time::new(h.parse().ok()?, m.parse().ok()?, 0, 0).ok()
}

/// `2026-12-24 18:00` or `2026-12-24T18:00`: a wall-clock date and time, no offset.
fn parse_local(text: &str) -> Option<CivilDateTime> {
    let text = text.trim();
    let (date, time) = text.split_once([' ', 'T'])?;
    let date: Date = parse_date(date)?;
    Some(date.to_datetime(parse_hh_mm(time)?))
}

/// `2026-12-07`.
fn parse_date(text: &str) -> Option<Date> {
    let parts: Vec<&str> = text.trim().split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return None;
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    Date::new(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?).ok()
}

/// Days since 1970-01-01 (proleptic Gregorian; Howard Hinnant's `days_from_civil`).
fn epoch_days(d: Date) -> i64 {
    let (y, m, day) = (
        i64::from(d.year()),
        i64::from(d.month()),
        i64::from(d.day()),
    );
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn monday_of(d: Date) -> Option<Date> {
    d.checked_add(Span::new().days(-i64::from(d.weekday().to_monday_zero_offset())))
        .ok()
}

/// The instant a wall-clock time names in `tz` (gap: after it; fold: the first).
fn instant(tz: &TimeZone, dt: CivilDateTime) -> Option<Timestamp> {
    tz.to_ambiguous_timestamp(dt).compatible().ok()
}

impl Weekly {
    /// Whether `ts` is in one of this shift's occurrences.
    fn holds(&self, ts: Timestamp) -> bool {
        let local = ts.to_zoned_datetime(self.tz.clone()).date();
        let Some(monday) = monday_of(local) else {
            return false;
        };
        // The occurrence that starts this week, the one from last week (it
        // may run into this one) and, for safety around folds, next week's.
        [-7i64, 0, 7].into_iter().any(|shift| {
            let Ok(m) = monday.checked_add(Span::new().days(shift)) else {
                return false;
            };
            if ((epoch_days(m) - self.anchor) / 7).rem_euclid(self.every) != 0 {
                return false;
            }
            let at = |(days, time): (i64, Time)| {
                m.checked_add(Span::new().days(days))
                    .ok()
                    .and_then(|d| instant(&self.tz, d.to_datetime(time)))
            };
            match (at(self.from), at(self.until)) {
                (Some(start), Some(end)) => start <= ts && ts < end,
                _ => false,
            }
        })
    }
}

impl Rota {
    /// Parses and validates a rota (errors name the line and the field).
    pub fn from_toml_str(text: &str) -> std::result::Result<Self, ConfigError> {
        Self::parse(text, "(inline)")
    }

    /// Reads, parses and validates a rota file.
    pub fn from_file(path: impl AsRef<Path>) -> std::result::Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, file: &str) -> std::result::Result<Self, ConfigError> {
        let ctx = Ctx { file, text };
        let raw: RawRota = toml::from_str(text).map_err(|e| ctx.toml(&e))?;
        if raw.schedules.is_empty() {
            return Err(ctx.err(0, "schedules", "name at least one schedule"));
        }
        let mut schedules = BTreeMap::new();
        for (i, s) in raw.schedules.into_iter().enumerate() {
            let at = |f: &str| format!("schedules[{i}].{f}");
            let id = s.id.get_ref().trim().to_string();
            if id.is_empty() || id.chars().any(char::is_control) || id.len() > 128 {
                return Err(ctx.err(
                    s.id.span().start,
                    &at("id"),
                    "must be 1 to 128 characters without control characters",
                ));
            }
            if schedules.contains_key(&id) {
                return Err(ctx.err(
                    s.id.span().start,
                    &at("id"),
                    format!("schedule `{id}` is defined twice"),
                ));
            }
            let tz = ctx.zone(&at("time_zone"), &s.time_zone)?;
            if s.weekly.is_empty() && s.overrides.is_empty() {
                return Err(ctx.err(
                    s.id.span().start,
                    &at("weekly"),
                    format!("schedule `{id}` has no weekly shift and no override"),
                ));
            }
            let weekly = s
                .weekly
                .into_iter()
                .enumerate()
                .map(|(j, w)| compile_weekly(&ctx, &format!("schedules[{i}].weekly[{j}]"), &tz, w))
                .collect::<std::result::Result<_, _>>()?;
            let overrides = s
                .overrides
                .into_iter()
                .enumerate()
                .map(|(j, o)| {
                    compile_override(&ctx, &format!("schedules[{i}].overrides[{j}]"), &tz, o)
                })
                .collect::<std::result::Result<_, _>>()?;
            schedules.insert(id, Schedule { weekly, overrides });
        }
        Ok(Self { schedules })
    }

    /// The exact subject ids on call for `schedule` at `at`; `None` for a
    /// schedule the rota does not have.
    pub fn on_call_at(&self, schedule: &str, at: DateTime<Utc>) -> Option<BTreeSet<String>> {
        let s = self.schedules.get(schedule)?;
        // An instant jiff cannot represent (far outside years -9999..9999) is in no shift.
        let Ok(ts) = Timestamp::new(at.timestamp(), at.timestamp_subsec_nanos() as i32) else {
            return Some(BTreeSet::new());
        };
        let mut active = s
            .overrides
            .iter()
            .filter(|o| o.from <= ts && ts < o.until)
            .peekable();
        if active.peek().is_some() {
            return Some(active.flat_map(|o| o.subjects.iter().cloned()).collect());
        }
        Some(
            s.weekly
                .iter()
                .filter(|w| w.holds(ts))
                .flat_map(|w| w.subjects.iter().cloned())
                .collect(),
        )
    }
}

fn compile_weekly(
    ctx: &Ctx<'_>,
    at: &str,
    schedule_tz: &TimeZone,
    w: RawWeekly,
) -> std::result::Result<Weekly, ConfigError> {
    let field = |f: &str| format!("{at}.{f}");
    let tz = match &w.time_zone {
        Some(name) => ctx.zone(&field("time_zone"), name)?,
        None => schedule_tz.clone(),
    };
    let when = |v: &Spanned<String>, f: &str| {
        parse_weekly_time(v.get_ref()).ok_or_else(|| {
            ctx.err(
                v.span().start,
                &field(f),
                format!(
                    "`{}` is not a day and a time such as `Mon 09:00`",
                    v.get_ref()
                ),
            )
        })
    };
    let from = when(&w.from, "from")?;
    let mut until = when(&w.until, "until")?;
    if until == from {
        return Err(ctx.err(
            w.until.span().start,
            &field("until"),
            "equals `from`: a shift needs a length (for a whole week, use two shifts)",
        ));
    }
    if until < from {
        until.0 += 7;
    }
    let subjects = ctx.subjects(&field("subjects"), &w.subjects)?;
    let every = match &w.every_weeks {
        None => 1,
        Some(n) if (1..=52).contains(n.get_ref()) => *n.get_ref(),
        Some(n) => {
            return Err(ctx.err(
                n.span().start,
                &field("every_weeks"),
                format!("`{}` is not a number of weeks from 1 to 52", n.get_ref()),
            ))
        }
    };
    let anchor = match (&w.first_week, every) {
        (None, 1) => 0,
        (None, _) => {
            return Err(ctx.err(
                w.from.span().start,
                &field("first_week"),
                "`every_weeks` needs `first_week`: a date in a week the shift applies",
            ))
        }
        (Some(d), _) => {
            let date = parse_date(d.get_ref()).and_then(monday_of).ok_or_else(|| {
                ctx.err(
                    d.span().start,
                    &field("first_week"),
                    format!("`{}` is not a date such as `2026-12-07`", d.get_ref()),
                )
            })?;
            epoch_days(date)
        }
    };
    Ok(Weekly {
        tz,
        from,
        until,
        subjects,
        every,
        anchor,
    })
}

fn compile_override(
    ctx: &Ctx<'_>,
    at: &str,
    schedule_tz: &TimeZone,
    o: RawOverride,
) -> std::result::Result<Override, ConfigError> {
    let field = |f: &str| format!("{at}.{f}");
    let tz = match &o.time_zone {
        Some(name) => ctx.zone(&field("time_zone"), name)?,
        None => schedule_tz.clone(),
    };
    let when = |v: &Spanned<String>, f: &str| {
        parse_local(v.get_ref())
            .and_then(|dt| instant(&tz, dt))
            .ok_or_else(|| {
                ctx.err(
                    v.span().start,
                    &field(f),
                    format!(
                        "`{}` is not a local date and time such as `2026-12-24 18:00`",
                        v.get_ref()
                    ),
                )
            })
    };
    let from = when(&o.from, "from")?;
    let until = when(&o.until, "until")?;
    if until <= from {
        return Err(ctx.err(
            o.until.span().start,
            &field("until"),
            format!(
                "`{}` is not after `from` (`{}`)",
                o.until.get_ref(),
                o.from.get_ref()
            ),
        ));
    }
    let subjects = ctx.subjects(&field("subjects"), &o.subjects)?;
    Ok(Override {
        from,
        until,
        subjects,
    })
}

#[async_trait]
impl OnCallSource for Rota {
    fn name(&self) -> &str {
        "rota"
    }

    async fn on_call(&self, schedule: &str, at: DateTime<Utc>) -> Result<BTreeSet<String>> {
        self.on_call_at(schedule, at)
            .ok_or_else(|| Error::Unavailable {
                what: "on-call rota".into(),
                message: format!("no schedule `{schedule}` in the rota"),
            })
    }

    fn schedules(&self) -> Option<BTreeSet<String>> {
        Some(self.schedules.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_times() {
        assert_eq!(parse_weekly_time("Mon 09:00").map(|(d, _)| d), Some(0));
        assert_eq!(parse_weekly_time("sunday 23:59").map(|(d, _)| d), Some(6));
        assert_eq!(parse_weekly_time("THU 00:00").map(|(d, _)| d), Some(3));
        for bad in [
            "Mo 09:00",
            "Mon 9:00",
            "Mon 24:00",
            "Mon 09:60",
            "Mon",
            "09:00",
            "Mon 09:00:00",
            "Mond 09:00",
        ] {
            assert_eq!(parse_weekly_time(bad), None, "{bad}");
        }
        assert!(parse_local("2026-12-24 18:00").is_some());
        assert!(parse_local("2026-12-24T18:00").is_some());
        for bad in [
            "2026-12-24",
            "2026-12-24 18:00Z",
            "2026-12-24T18:00+01:00",
            "2026-02-30 10:00",
            "26-12-24 18:00",
        ] {
            assert_eq!(parse_local(bad), None, "{bad}");
        }
    }

    #[test]
    fn epoch_days_agree_with_chrono() {
        for (y, m, d) in [
            (1970, 1, 1),
            (2026, 12, 7),
            (2000, 2, 29),
            (1969, 12, 31),
            (2400, 3, 1),
        ] {
            let ours = epoch_days(Date::new(y, m, d).unwrap_or_default());
            let theirs = chrono::NaiveDate::from_ymd_opt(y.into(), m as u32, d as u32)
                .map(|n| (n - chrono::NaiveDate::default()).num_days());
            assert_eq!(Some(ours), theirs, "{y}-{m}-{d}");
        }
    }
}
