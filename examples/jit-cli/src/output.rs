//! What the CLI prints: tables, records, verification results.

use jit_core::wire::{self, AuditVerification, CredentialsView, RequestAnswer};
use jit_core::RequestRecord;

use crate::client::Reply;

/// Prints a verification answer (the server's or `verify_offline`'s); exit 1 when broken.
pub(crate) fn print_verification(v: &AuditVerification, json: bool, quiet: bool) -> u8 {
    if json {
        println!("{}", wire::to_value(v));
    } else if !quiet {
        match v {
            AuditVerification::Verified {
                records,
                head,
                sealed,
                checkpoint,
                ..
            } => {
                let mut extra = String::new();
                if *sealed > 0 {
                    extra.push_str(&format!(", {sealed} sealed"));
                }
                if let Some(n) = checkpoint {
                    extra.push_str(&format!(", checkpoint at seq {n}"));
                }
                println!("audit chain verified: {records} records, head {head}{extra}");
            }
            AuditVerification::Broken { message, .. } => {
                println!("audit chain BROKEN: {message}");
            }
        }
    }
    u8::from(!v.is_ok())
}

pub(crate) fn ends(r: &RequestRecord) -> String {
    r.grant
        .as_ref()
        .map(|g| g.ends_at.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// The risk column: the score, `?` when it could not be assessed, `-` without a review.
pub(crate) fn risk_cell(r: &RequestRecord) -> String {
    match &r.decision.risk {
        None => "-".into(),
        Some(a) => a.score.map_or_else(|| "?".into(), |s| s.to_string()),
    }
}

/// The risk review for an approver: the summary, then each signal's reason.
pub(crate) fn risk_lines(r: &RequestRecord) -> Vec<String> {
    let Some(a) = &r.decision.risk else {
        return Vec::new();
    };
    std::iter::once(format!("{} [{}]", a.summary(), a.assessor))
        .chain(
            a.signals
                .iter()
                .map(|s| format!("  +{} {}: {}", s.weight, s.name, s.reason)),
        )
        .collect()
}

/// The ticket's verdict for an approver: verified or not, the ticket's
/// status and summary, and why.
pub(crate) fn ticket_line(r: &RequestRecord) -> Option<String> {
    let t = r.decision.ticket.as_ref()?;
    let mut line = format!(
        "{} {}",
        t.ticket,
        if t.verified {
            "verified"
        } else {
            "NOT verified"
        }
    );
    if let Some(s) = &t.status {
        line.push_str(&format!(" [{s}]"));
    }
    if let Some(s) = &t.summary {
        line.push_str(&format!(" \"{s}\""));
    }
    line.push_str(&format!(": {} ({})", t.reason, t.verifier));
    Some(line)
}

/// The on-call check for an approver: the schedules asked, those held, and
/// those nobody could answer.
pub(crate) fn on_call_line(r: &RequestRecord) -> Option<String> {
    let c = r.decision.on_call.as_ref()?;
    let held = if c.on_call.is_empty() {
        "not on call".to_string()
    } else {
        format!(
            "on call for {}",
            c.on_call.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    let mut line = format!("{held} (asked {})", c.asked.join(", "));
    for (schedule, why) in &c.unanswered {
        line.push_str(&format!("; {schedule} unanswered: {why}"));
    }
    Some(line)
}

pub(crate) fn print_table(rows: &[RequestRecord]) {
    println!(
        "{:<36}  {:<18}  {:<20}  {:<16}  {:<8}  {:<4}  ENDS (UTC)",
        "ID", "STATE", "ENTITLEMENT", "REQUESTER", "FOR", "RISK"
    );
    for r in rows {
        println!(
            "{:<36}  {:<18}  {:<20}  {:<16}  {:<8}  {:<4}  {}",
            r.id.to_string(),
            r.state.to_string(),
            r.request.entitlement,
            r.requester.id.to_string(),
            format!("{}s", r.request.duration.as_secs()),
            risk_cell(r),
            ends(r)
        );
    }
}

pub(crate) fn print_record(r: &RequestRecord) {
    println!("request      {}", r.id);
    println!("state        {}", r.state);
    println!("entitlement  {}", r.request.entitlement);
    println!("requester    {}", r.requester.id);
    for x in &r.decision.reasons {
        println!("policy       {x}");
    }
    for x in risk_lines(r) {
        println!("risk         {x}");
    }
    if let Some(x) = ticket_line(r) {
        println!("ticket       {x}");
    }
    if let Some(x) = on_call_line(r) {
        println!("on call      {x}");
    }
    for a in &r.approvals {
        println!("approved by  {}", a.approver.id);
    }
    if r.grant.is_some() {
        println!("grant ends   {} UTC", ends(r));
    }
    if let Some(n) = &r.note {
        println!("note         {n}");
    }
}

/// What an `assignment` grants, as record lines: nothing in it is secret
/// (the requester uses their own identity), so it is shown as it is.
/// `None` for other kinds, whose secrets are never printed here.
pub(crate) fn assignment_lines(c: &CredentialsView) -> Option<Vec<String>> {
    let CredentialsView::Assignment {
        description,
        scope,
        role,
        role_name,
        principal,
        expires_at,
        ..
    } = c
    else {
        return None;
    };
    let mut out = Vec::new();
    match (scope, role) {
        (None, None) => out.push(format!("assigned     {description}")),
        _ => {
            if let Some(s) = scope {
                out.push(format!("scope        {s}"));
            }
            match (role_name, role) {
                (Some(n), Some(id)) if n != id => out.push(format!("role         {n} ({id})")),
                (Some(n), _) => out.push(format!("role         {n}")),
                (None, Some(id)) => out.push(format!("role         {id}")),
                (None, None) => {}
            }
            if let Some(p) = principal {
                out.push(format!("assigned to  {p}"));
            }
        }
    }
    out.push(format!(
        "until        {} UTC",
        expires_at.format("%Y-%m-%d %H:%M:%S")
    ));
    Some(out)
}

pub(crate) fn emit(json: bool, reply: &Reply<RequestAnswer>) {
    if json {
        println!("{}", reply.raw);
    } else {
        let r = &reply.body.request;
        print_record(r);
        match reply
            .body
            .credentials
            .as_ref()
            .map(|c| (c, assignment_lines(c)))
        {
            Some((_, Some(lines))) => {
                for l in lines {
                    println!("{l}");
                }
            }
            Some((_, None)) => println!(
                "credentials  issued; `jit credentials {}` prints them",
                r.id
            ),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use jit_core::risk::{RiskAssessment, RiskSignal};

    use super::*;

    /// A pending record as the server answers it.
    fn pending() -> RequestRecord {
        serde_json::from_value(serde_json::json!({
            "id": "4b1c0a6e-1f55-4a0c-9f43-2d1a6f0e5b11",
            "version": 1,
            "state": "pending",
            "requester": {"id": "bob"},
            "request": {"entitlement": "db-read", "duration": 1800, "justification": "INC-1"},
            "decision": {"verdict": "needs_approval", "approvers": {"groups": ["leads"]},
                         "quorum": 1, "max_duration": 3600, "reasons": []},
            "created_at": "2026-11-29T23:00:00Z",
            "updated_at": "2026-11-29T23:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn approvers_see_the_score_and_every_signal() {
        let mut r = pending();
        assert_eq!(risk_cell(&r), "-");
        assert!(risk_lines(&r).is_empty());

        r.decision.risk = Some(RiskAssessment::from_signals(
            "history",
            vec![
                RiskSignal {
                    name: "first_for_entitlement".into(),
                    weight: 30,
                    reason: "first request for `db-read`".into(),
                },
                RiskSignal {
                    name: "burst".into(),
                    weight: 20,
                    reason: "5 earlier requests in the last 10m".into(),
                },
            ],
        ));
        assert_eq!(risk_cell(&r), "50");
        assert_eq!(
            risk_lines(&r),
            [
                "risk 50/100 (first_for_entitlement, burst) [history]",
                "  +30 first_for_entitlement: first request for `db-read`",
                "  +20 burst: 5 earlier requests in the last 10m",
            ]
        );

        r.decision.risk = Some(RiskAssessment::unavailable("http", "status 503"));
        assert_eq!(risk_cell(&r), "?");
        assert_eq!(risk_lines(&r), ["risk unknown: status 503 [http]"]);
    }

    #[test]
    fn approvers_see_the_tickets_verdict_and_the_on_call_check() {
        let mut r = pending();
        assert_eq!((ticket_line(&r), on_call_line(&r)), (None, None));

        r.decision.ticket = Some(
            serde_json::from_value(serde_json::json!({
                "ticket": "INC-1", "verifier": "jira", "verified": true,
                "reason": "status \"In Progress\" is allowed",
                "summary": "orders table is slow", "status": "In Progress"
            }))
            .unwrap(),
        );
        assert_eq!(
            ticket_line(&r).unwrap(),
            "INC-1 verified [In Progress] \"orders table is slow\": status \"In Progress\" is allowed (jira)"
        );
        r.decision.ticket = Some(jit_core::ticket::TicketVerdict::unavailable(
            "INC-2",
            "jira",
            "status 503",
        ));
        assert_eq!(
            ticket_line(&r).unwrap(),
            "INC-2 NOT verified: ticket `INC-2` could not be verified: status 503 (jira)"
        );

        r.decision.on_call = Some(
            serde_json::from_value(serde_json::json!({
                "source": "rota", "at": "2026-11-29T23:00:00Z",
                "asked": ["payments-primary", "night"], "on_call": ["payments-primary"],
                "unanswered": {"night": "pager unavailable"}
            }))
            .unwrap(),
        );
        assert_eq!(
            on_call_line(&r).unwrap(),
            "on call for payments-primary (asked payments-primary, night); night unanswered: pager unavailable"
        );
        r.decision.on_call.as_mut().unwrap().on_call.clear();
        assert!(on_call_line(&r).unwrap().starts_with("not on call (asked"));
    }

    fn view(v: serde_json::Value) -> CredentialsView {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn assignments_show_scope_role_principal_and_end() {
        let c = view(serde_json::json!({
            "kind": "assignment", "description": "role `Reader` at `/subscriptions/s`",
            "scope": "/subscriptions/s/resourceGroups/prod",
            "role": "/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7",
            "role_name": "Reader", "principal": "a3bb8764-cb92-4276-9d2a-ca1e895e55ea",
            "expires_at": "2026-11-29T12:00:00Z",
        }));
        assert_eq!(
            assignment_lines(&c).unwrap(),
            [
                "scope        /subscriptions/s/resourceGroups/prod",
                "role         Reader (/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7)",
                "assigned to  a3bb8764-cb92-4276-9d2a-ca1e895e55ea",
                "until        2026-11-29 12:00:00 UTC",
            ]
        );
        // A GCP binding: the role is its own name.
        let gcp = view(serde_json::json!({
            "kind": "assignment", "description": "x", "scope": "projects/p",
            "role": "roles/viewer", "principal": "user:alice@example.com",
            "expires_at": "2026-11-29T12:00:00Z",
        }));
        assert_eq!(
            assignment_lines(&gcp).unwrap()[1],
            "role         roles/viewer"
        );
        // An older server: its description, and the end.
        let old = view(serde_json::json!({
            "kind": "assignment", "description": "Reader on /subscriptions/s",
            "expires_at": "2026-11-29T12:00:00Z",
        }));
        assert_eq!(
            assignment_lines(&old).unwrap(),
            [
                "assigned     Reader on /subscriptions/s",
                "until        2026-11-29 12:00:00 UTC"
            ]
        );
        // Secret-bearing kinds are never turned into lines.
        let aws = view(serde_json::json!({
            "kind": "aws", "access_key_id": "ASIAEXAMPLE", "secret_access_key": "sk",
            "session_token": "st", "expires_at": "2026-11-29T12:00:00Z",
        }));
        assert!(assignment_lines(&aws).is_none());
    }
}
