//! What the CLI prints: tables, records, verification results.

use jit_core::wire::{self, AuditVerification, RequestAnswer};
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

pub(crate) fn print_table(rows: &[RequestRecord]) {
    println!(
        "{:<36}  {:<18}  {:<20}  {:<16}  {:<8}  ENDS (UTC)",
        "ID", "STATE", "ENTITLEMENT", "REQUESTER", "FOR"
    );
    for r in rows {
        println!(
            "{:<36}  {:<18}  {:<20}  {:<16}  {:<8}  {}",
            r.id.to_string(),
            r.state.to_string(),
            r.request.entitlement,
            r.requester.id.to_string(),
            format!("{}s", r.request.duration.as_secs()),
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

pub(crate) fn emit(json: bool, reply: &Reply<RequestAnswer>) {
    if json {
        println!("{}", reply.raw);
    } else {
        let r = &reply.body.request;
        print_record(r);
        if reply.body.credentials.is_some() {
            println!(
                "credentials  issued; `jit credentials {}` prints them",
                r.id
            );
        }
    }
}
