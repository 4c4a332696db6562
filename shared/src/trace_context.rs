//! W3C trace context (`traceparent`, `tracestate`) across the broker.
//!
//! A producer's publish span writes its context into the message headers; the worker makes its
//! run span a child of it; an event a step publishes carries the run's context on. When no
//! OpenTelemetry layer is installed (tracing not exported), spans have no context: nothing is
//! written, and incoming headers pass through unchanged, so a trace started upstream is still
//! continued by whoever exports downstream.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A trace context as it travels in headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeaders {
    /// `traceparent`: version, trace id, parent span id, flags.
    pub traceparent: String,
    /// `tracestate`: vendor data, passed on as is.
    pub tracestate: Option<String>,
}

struct Map<'a>(&'a mut HashMap<String, String>);

impl Injector for Map<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct Headers<'a>(&'a TraceHeaders);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(&self.0.traceparent),
            "tracestate" => self.0.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The context of `span`, to put in the headers of a message published under it; `None` when
/// the span is not exported.
pub fn of_span(span: &tracing::Span) -> Option<TraceHeaders> {
    let context = span.context();
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut Map(&mut map));
    let traceparent = map.remove("traceparent")?;
    Some(TraceHeaders {
        traceparent,
        tracestate: map.remove("tracestate").filter(|s| !s.is_empty()),
    })
}

/// Makes `span` a child of the context `headers` carry. An invalid `traceparent` is ignored
/// (the span starts a trace of its own): a producer's bad header must not fail its job.
pub fn follow(span: &tracing::Span, headers: &TraceHeaders) {
    let context = TraceContextPropagator::new().extract(&Headers(headers));
    let _ = span.set_parent(context);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_that_is_not_exported_has_no_context_to_send() {
        let span = tracing::info_span!("publish");
        assert_eq!(of_span(&span), None);
    }

    #[test]
    fn a_malformed_traceparent_is_ignored() {
        let span = tracing::info_span!("run");
        follow(
            &span,
            &TraceHeaders {
                traceparent: "not-a-traceparent".into(),
                tracestate: None,
            },
        );
    }
}
