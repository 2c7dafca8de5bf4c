//! `cratectl events`: the daemon's events as they happen, one line each, as ctr prints them.

use std::io::Write;

use crated_api::containerd::services::events::v1 as events;

use crate::client::Connection;

/// `cratectl events [FILTER...]`: one line per event, as ctr prints them.
pub async fn run(conn: &Connection, filters: Vec<String>) -> anyhow::Result<()> {
    let mut stream = conn
        .events()
        .subscribe(conn.request(events::SubscribeRequest { filters }))
        .await?
        .into_inner();
    while let Some(e) = stream.message().await? {
        let ts = e.timestamp.unwrap_or_default();
        let when = time::OffsetDateTime::from_unix_timestamp(ts.seconds)
            .map(|t| t + time::Duration::nanoseconds(ts.nanos.into()))
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let event = e.event.unwrap_or_default();
        println!("{when} {} {} {}", e.namespace, e.topic, event.type_url);
        std::io::stdout().flush()?;
    }
    Ok(())
}
