//! The event exchange, plugin `io.containerd.event.v1.exchange`: services publish containerd's
//! events (a topic such as `/tasks/exit`, a namespace and a protobuf `Any`) here, shims forward
//! theirs, and subscribers receive every envelope that passes their filters.
//!
//! Delivery is best effort, as containerd's: a subscriber that falls more than
//! [`SUBSCRIBER_BACKLOG`] envelopes behind loses the oldest and is told how many.

mod fields;

use std::sync::Arc;

use crated_errdefs::{HasKind, Kind};
use crated_plugin::{types, Instance, Registration};
use tokio::sync::broadcast;

/// Envelopes a slow subscriber may lag behind before it loses some.
pub const SUBSCRIBER_BACKLOG: usize = 1024;

/// One event as it travels: containerd's `Envelope`.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Nanoseconds since the epoch.
    pub timestamp: u64,
    pub namespace: String,
    pub topic: String,
    pub event: prost_types::Any,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("envelope topic {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: String },
    #[error("event envelope has invalid namespace: {0}")]
    InvalidNamespace(String),
    #[error("timestamp must be set on forwarded event: invalid argument")]
    NoTimestamp,
    #[error("event must be set")]
    NoEvent,
}

impl HasKind for EventError {
    fn kind(&self) -> Kind {
        Kind::InvalidArgument
    }
}

/// containerd's topic rule: `/` then one or more `/`-separated identifiers.
pub fn validate_topic(topic: &str) -> Result<(), EventError> {
    let invalid = |reason: String| EventError::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    };
    if topic.is_empty() {
        return Err(invalid("must not be empty: invalid argument".into()));
    }
    let Some(rest) = topic.strip_prefix('/') else {
        return Err(invalid("must start with '/': invalid argument".into()));
    };
    if rest.is_empty() {
        return Err(invalid(
            "must have at least one component: invalid argument".into(),
        ));
    }
    for component in rest.split('/') {
        crated_metadata::validate::identifier(component)
            .map_err(|e| invalid(format!("failed validation on component {component:?}: {e}")))?;
    }
    Ok(())
}

/// The fields subscriber filters see: `topic`, `namespace`, and `event.<field>` of the decoded
/// event (`fields::event_field`).
pub fn field<'a>(e: &'a Envelope) -> impl Fn(&[String]) -> Option<String> + 'a {
    move |path: &[String]| match path.first().map(String::as_str) {
        Some("topic") if path.len() == 1 => Some(e.topic.clone()),
        Some("namespace") if path.len() == 1 => Some(e.namespace.clone()),
        Some("event") => fields::event_field(&e.event, &path[1..]),
        _ => None,
    }
}

pub struct Exchange {
    sender: broadcast::Sender<Arc<Envelope>>,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange::new()
    }
}

/// What a subscriber reads.
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Envelope>>,
    filter: crated_filters::Filter,
}

impl Subscription {
    /// The next envelope that passes the filter; None once the exchange is gone.
    pub async fn next(&mut self) -> Option<Arc<Envelope>> {
        loop {
            match self.receiver.recv().await {
                Ok(e) if self.filter.matches(&field(&e)) => return Some(e),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("an event subscriber fell behind and lost {n} events");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Exchange {
    pub fn new() -> Self {
        Exchange {
            sender: broadcast::channel(SUBSCRIBER_BACKLOG).0,
        }
    }

    /// Publishes an event of this daemon, stamped now.
    pub fn publish(
        &self,
        namespace: &str,
        topic: &str,
        event: prost_types::Any,
    ) -> Result<(), EventError> {
        self.forward(Envelope {
            timestamp: crated_metadata::now_nanos(),
            namespace: namespace.to_owned(),
            topic: topic.to_owned(),
            event,
        })
    }

    /// Publishes one of containerd's events under its type URL, the message's full name
    /// (`containerd.events.TaskExit`), as containerd's `typeurl` names them.
    pub fn publish_message<M: prost::Message>(
        &self,
        namespace: &str,
        topic: &str,
        type_name: &str,
        message: &M,
    ) {
        let event = prost_types::Any {
            type_url: type_name.to_owned(),
            value: message.encode_to_vec(),
        };
        if let Err(e) = self.publish(namespace, topic, event) {
            // Our own topics are constants; a failure here is a bug, not input.
            tracing::error!("publishing {topic}: {e}");
        }
    }

    /// Passes on an envelope made elsewhere (a shim, a client's Forward), as it is, once it
    /// passes containerd's checks: a valid namespace and topic, and a time.
    pub fn forward(&self, envelope: Envelope) -> Result<(), EventError> {
        crated_metadata::validate::identifier(&envelope.namespace)
            .map_err(|e| EventError::InvalidNamespace(e.to_string()))?;
        validate_topic(&envelope.topic)?;
        if envelope.timestamp == 0 {
            return Err(EventError::NoTimestamp);
        }
        tracing::debug!(topic = %envelope.topic, namespace = %envelope.namespace, "event");
        // No subscriber is not an error.
        let _ = self.sender.send(Arc::new(envelope));
        Ok(())
    }

    pub fn subscribe(&self, filter: crated_filters::Filter) -> Subscription {
        Subscription {
            receiver: self.sender.subscribe(),
            filter,
        }
    }
}

pub fn registration() -> Registration {
    Registration::new(types::EVENT, "exchange", |_ctx| async move {
        Ok(Instance::new(Arc::new(Exchange::new())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn any(v: &[u8]) -> prost_types::Any {
        prost_types::Any {
            type_url: "containerd.events.TaskExit".into(),
            value: v.to_vec(),
        }
    }

    #[test]
    fn topics_follow_containerd_rules() {
        assert!(validate_topic("/tasks/exit").is_ok());
        assert!(validate_topic("/snapshot/prepare").is_ok());
        for bad in ["tasks/exit", "/", "/tasks//exit", "/tasks/bad topic"] {
            let err = validate_topic(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn forwarded_envelopes_are_checked_as_containerd_checks_them() {
        let exchange = Exchange::new();
        let envelope = |namespace: &str, topic: &str, timestamp: u64| Envelope {
            timestamp,
            namespace: namespace.into(),
            topic: topic.into(),
            event: prost_types::Any::default(),
        };
        assert!(exchange.forward(envelope("ns", "/a/b", 1)).is_ok());
        for (bad, message) in [
            (
                envelope("../x", "/a", 1),
                "event envelope has invalid namespace: identifier \"../x\" must match",
            ),
            (
                envelope("", "/a", 1),
                "event envelope has invalid namespace: identifier must not be empty",
            ),
            (
                envelope("ns", "", 1),
                "envelope topic \"\": must not be empty: invalid argument",
            ),
            (
                envelope("ns", "/a", 0),
                "timestamp must be set on forwarded event: invalid argument",
            ),
        ] {
            let err = exchange.forward(bad).unwrap_err();
            assert_eq!(err.kind(), Kind::InvalidArgument);
            assert!(err.to_string().starts_with(message), "{err}");
        }
    }

    #[tokio::test]
    async fn subscribers_get_what_passes_their_filter_in_order() {
        let exchange = Exchange::new();
        let mut all = exchange.subscribe(crated_filters::Filter::always());
        let mut exits = exchange.subscribe(
            crated_filters::parse_all(&["topic==\"/tasks/exit\",namespace==a"]).unwrap(),
        );
        exchange.publish("a", "/tasks/start", any(b"1")).unwrap();
        exchange.publish("b", "/tasks/exit", any(b"2")).unwrap();
        exchange.publish("a", "/tasks/exit", any(b"3")).unwrap();
        assert!(exchange.publish("", "/tasks/exit", any(b"4")).is_err());
        assert!(exchange.publish("a", "tasks", any(b"5")).is_err());
        for expected in [b"1", b"2", b"3"] {
            assert_eq!(all.next().await.unwrap().event.value, expected);
        }
        let e = exits.next().await.unwrap();
        assert_eq!((e.namespace.as_str(), &e.event.value[..]), ("a", &b"3"[..]));
        assert!(e.timestamp > 0);
    }

    #[tokio::test]
    async fn event_fields_filter_on_the_decoded_event() {
        use crated_api::containerd::events as ev;
        let exchange = Exchange::new();
        let mut of_c1 = exchange.subscribe(
            crated_filters::parse_all(&["event.container_id==c1", "event.labels.app==web"])
                .unwrap(),
        );
        let mut ids = exchange.subscribe(crated_filters::parse_all(&["event.id"]).unwrap());
        let exit = |c: &str, id: &str| ev::TaskExit {
            container_id: c.into(),
            id: id.into(),
            ..Default::default()
        };
        exchange.publish_message(
            "a",
            "/tasks/exit",
            "containerd.events.TaskExit",
            &exit("c2", ""),
        );
        exchange.publish_message(
            "a",
            "/tasks/exit",
            "containerd.events.TaskExit",
            &exit("c1", "e1"),
        );
        let update = ev::ContainerUpdate {
            id: "c3".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        };
        exchange.publish_message(
            "a",
            "/containers/update",
            "containerd.events.ContainerUpdate",
            &update,
        );
        let got = of_c1.next().await.unwrap();
        assert_eq!(
            ev::TaskExit::decode(&got.event.value[..])
                .unwrap()
                .container_id,
            "c1"
        );
        assert_eq!(of_c1.next().await.unwrap().topic, "/containers/update");
        // An empty string is an absent field: only the exit with an id passes.
        let got = ids.next().await.unwrap();
        assert_eq!(ev::TaskExit::decode(&got.event.value[..]).unwrap().id, "e1");
        // A field of another type, or of an unknown type, is absent.
        let field = |path: &[&str]| {
            let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
            super::fields::event_field(&got.event, &path)
        };
        assert_eq!(field(&["container_id"]), Some("c1".into()));
        assert_eq!(field(&["key"]), None);
        assert_eq!(field(&[]), None);
    }
}
